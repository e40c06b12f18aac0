//! Vhost-user back-ends side by side: virtiofsd (the back-end QEMU and Cloud Hypervisor
//! users run) against our `hypervisor vhost-user-fs`, passthrough and redirecting, on the
//! same FUSE request stream from [`crate::vhost_frontend`].
//!
//! Every round runs every target once, in an order that rotates from round to round; each
//! run starts its back-end process fresh on a fresh share directory holding the same files
//! (for the redirecting share, put there through the redirecting file system, so that
//! their data lies in the store; for a back-end run as an ordinary user, written plain,
//! given to that user and moved to the store by `fsredirect dehydrate` run as that user),
//! written back to disk before the back-end starts. Each run: for 1 and then 16 requests in
//! flight, LOOKUP of existing files, GETATTR of them, random 4 KiB READs and then WRITEs of
//! one file, sequential 1 MiB READs of it, sequential 1 MiB WRITEs of a new file ended by an
//! FSYNC, CREATE (then an untimed RELEASE) of new files and UNLINK of those. Each round
//! first makes the same workload as the host's own calls ([`crate::vhost_host`]), the limit
//! every figure is also set against.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fsredirect::{FsConfig, RedirectFs, ShareSpec};
use fuse_backend_rs::abi::fuse_abi::Opcode;

use crate::driver::Driver;
use crate::fuse_wire::{self, ROOT};
use crate::unprivileged;
use crate::vhost_frontend::{Call, Counters, FrontendConfig, VhostFrontend};
use crate::vhost_host::{run_host, HostFigures};
use crate::workload::{settle, Rng};
use crate::{io_err, BenchError, Result};

/// The tag of every share the back-ends serve.
pub const TAG: &str = "bench";

/// How many back-ends a round runs.
pub const PEERS: usize = 8;

/// Threads of the request pool of [`Peer::OursPooled`]: one per core of this project's
/// machines.
pub const POOL_THREADS: usize = 2;

/// The back-ends compared, in column order. virtiofsd and ours run confined the same way
/// (their defaults: namespace sandbox, seccomp filters that kill, no thread pool); then our
/// passthrough without either confinement, which gives their cost, and with a request pool,
/// which gives what serving one queue's requests side by side gains or costs. The last three
/// run as an ordinary user ([`crate::unprivileged`]), without file handles, confined as the
/// first three are where they can be (the namespace sandbox, in a user namespace of their
/// own; the chroot one needs root, so with it they run without a sandbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// virtiofsd, `--sandbox=namespace --seccomp=kill --cache=auto`.
    Virtiofsd,
    /// `hypervisor vhost-user-fs` on a share without a store.
    OursPassthrough,
    /// `hypervisor vhost-user-fs` on a redirecting share.
    OursRedirect,
    /// The same passthrough with `--sandbox none --seccomp none`.
    OursUnconfined,
    /// The confined passthrough with `--thread-pool-size` [`POOL_THREADS`].
    OursPooled,
    /// virtiofsd as an ordinary user, `--seccomp=kill --cache=auto`.
    VirtiofsdUnprivileged,
    /// Our passthrough as an ordinary user.
    OursPassthroughUnprivileged,
    /// Our redirecting share as an ordinary user.
    OursRedirectUnprivileged,
}

impl Peer {
    /// All back-ends, in column order.
    pub const ALL: [Peer; PEERS] = [
        Peer::Virtiofsd,
        Peer::OursPassthrough,
        Peer::OursRedirect,
        Peer::OursUnconfined,
        Peer::OursPooled,
        Peer::VirtiofsdUnprivileged,
        Peer::OursPassthroughUnprivileged,
        Peer::OursRedirectUnprivileged,
    ];

    /// Name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Virtiofsd => "virtiofsd",
            Peer::OursPassthrough => "ours passthrough",
            Peer::OursRedirect => "ours redirect",
            Peer::OursUnconfined => "ours passthrough, unconfined",
            Peer::OursPooled => "ours passthrough, request pool",
            Peer::VirtiofsdUnprivileged => "virtiofsd, not root",
            Peer::OursPassthroughUnprivileged => "ours passthrough, not root",
            Peer::OursRedirectUnprivileged => "ours redirect, not root",
        }
    }

    /// Its column: its place in [`Peer::ALL`].
    pub fn index(self) -> usize {
        Peer::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    /// Whether it is virtiofsd (as root or not).
    pub fn is_virtiofsd(self) -> bool {
        matches!(self, Peer::Virtiofsd | Peer::VirtiofsdUnprivileged)
    }

    /// Whether it serves a redirecting share.
    pub fn redirects(self) -> bool {
        matches!(self, Peer::OursRedirect | Peer::OursRedirectUnprivileged)
    }

    /// Whether it runs as an ordinary user ([`crate::unprivileged::UID`]).
    pub fn unprivileged(self) -> bool {
        matches!(
            self,
            Peer::VirtiofsdUnprivileged
                | Peer::OursPassthroughUnprivileged
                | Peer::OursRedirectUnprivileged
        )
    }

    /// The `--sandbox` mode it runs in, where `confined` is the mode of the confined
    /// back-ends: none for the unconfined one, and for those run as an ordinary user when
    /// `confined` needs root (chroot; both back-ends then run the same way, unsandboxed).
    pub fn sandbox(self, confined: &str) -> &str {
        let needs_root = confined != "namespace";
        if self == Peer::OursUnconfined || (self.unprivileged() && needs_root) {
            "none"
        } else {
            confined
        }
    }
}

/// The operations measured, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VuOp {
    /// LOOKUP of an existing file.
    Lookup,
    /// GETATTR of a looked-up file.
    Getattr,
    /// READ of 4 KiB at a random 4 KiB-aligned offset of one open file.
    Read4k,
    /// WRITE of 4 KiB at a random 4 KiB-aligned offset of the same file.
    Write4k,
    /// READs of 1 MiB, in order, over the same file (again from its start at its end).
    SeqRead,
    /// WRITEs of 1 MiB, in order, to a new file, and one FSYNC of it at the end (timed).
    SeqWrite,
    /// CREATE of a new file (its RELEASE follows, untimed).
    Create,
    /// UNLINK of a file created before.
    Unlink,
}

impl VuOp {
    /// All operations, in report order.
    pub const ALL: [VuOp; VU_OPS] = [
        VuOp::Lookup,
        VuOp::Getattr,
        VuOp::Read4k,
        VuOp::Write4k,
        VuOp::SeqRead,
        VuOp::SeqWrite,
        VuOp::Create,
        VuOp::Unlink,
    ];

    /// Name for tables.
    pub fn name(self) -> &'static str {
        match self {
            VuOp::Lookup => "lookup",
            VuOp::Getattr => "getattr",
            VuOp::Read4k => "rand read 4k",
            VuOp::Write4k => "rand write 4k",
            VuOp::SeqRead => "seq read 1M",
            VuOp::SeqWrite => "seq write 1M + fsync",
            VuOp::Create => "create",
            VuOp::Unlink => "unlink",
        }
    }

    /// Whether the figure is data throughput (MB/s) rather than requests per second.
    pub fn is_sequential(self) -> bool {
        matches!(self, VuOp::SeqRead | VuOp::SeqWrite)
    }

    /// The unit of [`VuOp::figure`].
    pub fn unit(self) -> &'static str {
        match self.is_sequential() {
            true => "MB/s",
            false => "ops/s",
        }
    }

    /// The figure reported for a phase: MB/s for sequential I/O (1 MiB per request), else
    /// requests per second.
    pub fn figure(self, f: &OpFigures) -> f64 {
        match self.is_sequential() {
            true => f.ops_per_sec * SEQ_CHUNK as f64 / 1e6,
            false => f.ops_per_sec,
        }
    }

    /// Where the op's figures are in [`RunFigures`].
    pub fn index(self) -> usize {
        VuOp::ALL.iter().position(|&o| o == self).unwrap_or(0)
    }
}

/// Number of operations measured.
pub const VU_OPS: usize = 8;

/// Bytes per sequential READ or WRITE.
pub const SEQ_CHUNK: u32 = 1 << 20;

/// Sequential READs and WRITEs per depth and run (256 MiB each way).
pub const SEQ_REQUESTS: usize = 256;

/// Requests in flight, in report order.
pub const DEPTHS: [usize; 2] = [1, 16];

/// The binaries and sizes of the vhost-user part.
#[derive(Debug, Clone)]
pub struct VuParams {
    /// The `hypervisor` binary.
    pub hypervisor: PathBuf,
    /// The virtiofsd binary, or why there is none.
    pub virtiofsd: std::result::Result<PathBuf, String>,
    /// The `fsredirect` binary (its `dehydrate` fills the unprivileged redirecting share).
    pub fsredirect: PathBuf,
    /// Why the back-ends run as an ordinary user are left out, if they are.
    pub unprivileged_skipped: Option<String>,
    /// Rounds (every target once per round).
    pub rounds: usize,
    /// The `--sandbox` mode of virtiofsd and of ours (`namespace` or `chroot`).
    pub sandbox: String,
    /// Files pre-created in the share, and files created then unlinked per depth.
    pub files: usize,
    /// LOOKUPs, GETATTRs and READs per depth.
    pub ops: usize,
    /// Size of the file the READs read, MiB.
    pub data_mib: u64,
}

/// One operation at one depth in one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpFigures {
    /// Requests per second over the phase.
    pub ops_per_sec: f64,
    /// Median latency from making a request available to reaping its reply, µs.
    pub p50_us: f64,
    /// Kicks, interrupts and requests of the phase.
    pub counters: Counters,
}

/// One run of one target: `[op][depth]`.
pub type RunFigures = [[OpFigures; 2]; VU_OPS];

/// Per target (`Peer::ALL` order), every round's figures; virtiofsd's may be missing.
#[derive(Debug, Clone)]
pub struct VhostUserSummary {
    /// Runs per target, in round order (empty for a target that did not run).
    pub runs: [Vec<RunFigures>; PEERS],
    /// The same workload as the host's own calls, one run per round
    /// ([`crate::vhost_host`]).
    pub host: Vec<HostFigures>,
    /// Why virtiofsd has no figures, if it has none.
    pub virtiofsd_missing: Option<String>,
    /// Why virtiofsd run as an ordinary user has no figures, if it has none.
    pub virtiofsd_unprivileged_missing: Option<String>,
    /// Why no back-end ran as an ordinary user, if none did.
    pub unprivileged_skipped: Option<String>,
    /// virtiofsd's `--version`, if it ran.
    pub virtiofsd_version: Option<String>,
    /// The parameters, in words.
    pub params: String,
    /// The `--sandbox` mode both confined back-ends ran in.
    pub sandbox: String,
}

impl VhostUserSummary {
    /// Median and (min, max) over rounds of `f` of target `t`, or `None` without runs.
    pub fn spread(&self, t: usize, f: impl Fn(&RunFigures) -> f64) -> Option<(f64, f64, f64)> {
        crate::stats::spread(&self.runs[t].iter().map(f).collect::<Vec<_>>())
    }

    /// Target `a`'s `f` over target `b`'s, the median of the per-round ratios.
    pub fn ratio(&self, a: usize, b: usize, f: impl Fn(&RunFigures) -> f64) -> Option<f64> {
        if self.runs[a].is_empty() || self.runs[b].is_empty() {
            return None;
        }
        Some(crate::stats::paired_ratio(
            self.runs[a]
                .iter()
                .zip(&self.runs[b])
                .map(|(x, y)| (f(x), f(y))),
        ))
    }

    /// Median and (min, max) over rounds of `f` of the host's own calls, or `None` without
    /// host runs.
    pub fn host_spread(&self, f: impl Fn(&HostFigures) -> f64) -> Option<(f64, f64, f64)> {
        crate::stats::spread(&self.host.iter().map(f).collect::<Vec<_>>())
    }

    /// Target `a`'s `f` over the host's `g`, the median of the per-round ratios.
    pub fn host_ratio(
        &self,
        a: usize,
        f: impl Fn(&RunFigures) -> f64,
        g: impl Fn(&HostFigures) -> f64,
    ) -> Option<f64> {
        if self.runs[a].is_empty() || self.host.is_empty() {
            return None;
        }
        Some(crate::stats::paired_ratio(
            self.runs[a]
                .iter()
                .zip(&self.host)
                .map(|(x, y)| (f(x), g(y))),
        ))
    }

    /// The lowest and highest per-round ratio `f(a) / f(b)`, or `None` without runs.
    pub fn ratio_range(
        &self,
        a: usize,
        b: usize,
        f: impl Fn(&RunFigures) -> f64,
    ) -> Option<(f64, f64)> {
        crate::stats::paired_range(
            self.runs[a]
                .iter()
                .zip(&self.runs[b])
                .map(|(x, y)| (f(x), f(y))),
        )
    }
}

/// How the back-ends are started: their binaries and the sandbox both confined ones use.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The `hypervisor` binary.
    pub hypervisor: &'a Path,
    /// The virtiofsd binary, if there is one.
    pub virtiofsd: Option<&'a Path>,
    /// The `--sandbox` mode of virtiofsd and of ours (`namespace` or `chroot`).
    pub sandbox: &'a str,
}

/// A back-end process serving one share on its socket.
pub struct Backend {
    child: Child,
    /// The copy of the program a back-end run as an ordinary user was started from, if it
    /// needed one (kept until the back-end is gone).
    _program: Option<unprivileged::Runnable>,
    socket: PathBuf,
    log: PathBuf,
    name: &'static str,
}

impl Backend {
    /// Starts `peer` as `launch` says on `share` (with `store` for the redirecting share),
    /// listening on `socket`, its output in `log`; returns once the socket is there.
    pub fn start(
        peer: Peer,
        launch: Launch<'_>,
        share: &Path,
        store: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Backend> {
        let sandbox = peer.sandbox(launch.sandbox);
        let program = match peer.is_virtiofsd() {
            true => launch
                .virtiofsd
                .ok_or_else(|| BenchError::Backend("no virtiofsd binary".into()))?,
            false => launch.hypervisor,
        };
        let copy = match peer.unprivileged() {
            true => Some(unprivileged::Runnable::new(program)?),
            false => None,
        };
        let program = copy.as_ref().map_or(program, |c| c.path());
        let mut cmd = match peer {
            Peer::Virtiofsd | Peer::VirtiofsdUnprivileged => {
                let mut cmd = Command::new(program);
                cmd.arg("--socket-path")
                    .arg(socket)
                    .arg("--shared-dir")
                    .arg(share)
                    .arg(format!("--sandbox={sandbox}"))
                    .args(["--seccomp=kill", "--cache=auto", "--log-level=error"]);
                cmd
            }
            Peer::OursPassthrough
            | Peer::OursRedirect
            | Peer::OursUnconfined
            | Peer::OursPooled
            | Peer::OursPassthroughUnprivileged
            | Peer::OursRedirectUnprivileged => {
                let mut spec = format!("tag={TAG},dir={}", share.display());
                if peer.redirects() {
                    spec.push_str(&format!(",store={}", store.display()));
                }
                let mut cmd = Command::new(program);
                cmd.arg("vhost-user-fs")
                    .arg("--socket")
                    .arg(socket)
                    .arg("--share")
                    .arg(spec);
                cmd.args(["--sandbox", sandbox]);
                if peer == Peer::OursUnconfined {
                    cmd.args(["--seccomp", "none"]);
                }
                if peer == Peer::OursPooled {
                    cmd.arg("--thread-pool-size").arg(POOL_THREADS.to_string());
                }
                cmd
            }
        };
        if peer.unprivileged() {
            unprivileged::run_as_user(&mut cmd);
        }
        let out = File::create(log).map_err(|source| BenchError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| BenchError::Io {
            what: "clone a log descriptor".into(),
            source,
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| BenchError::Io {
                what: format!("start {}", cmd.get_program().to_string_lossy()),
                source,
            })?;
        let mut backend = Backend {
            child,
            _program: copy,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            name: peer.name(),
        };
        backend.wait_for_socket(Duration::from_secs(10))?;
        Ok(backend)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    fn wait_for_socket(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let is_socket = std::fs::metadata(&self.socket)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if is_socket {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Backend(format!(
                    "{} exited ({status}) before listening: {}",
                    self.name,
                    self.log_tail()
                )));
            }
            if start.elapsed() > timeout {
                return Err(BenchError::Backend(format!(
                    "{} did not create {} within {} s: {}",
                    self.name,
                    self.socket.display(),
                    timeout.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the back-end to exit after its front-end went away (it should: both
    /// back-ends serve one front-end); stops it after `grace` and says so.
    pub fn finish(mut self, grace: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < grace => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(BenchError::Backend(format!(
                        "{} did not exit within {} ms of the front-end's disconnect",
                        self.name,
                        grace.as_millis()
                    )));
                }
                Err(source) => {
                    return Err(BenchError::Io {
                        what: format!("wait for {}", self.name),
                        source,
                    })
                }
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Only a back-end that is still running (after an error) is stopped here.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Name of pre-created file `i`.
pub fn file_name(i: usize) -> String {
    format!("f{i:06}")
}

/// The contents of pre-created file `i` (short, and different from file to file).
pub fn file_contents(i: usize) -> Vec<u8> {
    format!("file {i}\n").into_bytes().repeat(1 + i % 7)
}

/// Puts `files` files and `data.bin` of `data_mib` MiB in `share`: with plain host calls,
/// or through a redirecting `RedirectFs` over `share` and `store` (then the data lies in
/// the store, as if a guest had written it).
pub fn populate(share: &Path, store: Option<&Path>, files: usize, data_mib: u64) -> Result<()> {
    std::fs::create_dir_all(share).map_err(io_err(format!("create {}", share.display())))?;
    let Some(store) = store else {
        for i in 0..files {
            let path = share.join(file_name(i));
            std::fs::write(&path, file_contents(i))
                .map_err(io_err(format!("write {}", path.display())))?;
        }
        let path = share.join(DATA_FILE);
        let mut f = File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..data_mib {
            f.write_all(&chunk)
                .map_err(io_err(format!("write {}", path.display())))?;
        }
        return Ok(());
    };
    let spec = format!(
        "tag={TAG},dir={},store={}",
        share.display(),
        store.display()
    );
    let share_spec = ShareSpec::parse(&spec).map_err(|e| BenchError::Setup(e.to_string()))?;
    let fs = RedirectFs::new(&share_spec, FsConfig::default())
        .map_err(|e| BenchError::Setup(format!("{spec}: {e}")))?;
    let mut driver = Driver::new(fs)?;
    for i in 0..files {
        let contents = file_contents(i);
        let (node, fh) = driver.create(ROOT, &file_name(i))?;
        driver.fill_data_with(&contents)?;
        driver.write(node, fh, 0, contents.len())?;
        driver.release(node, fh, false)?;
        driver.forget(node, 1)?;
    }
    let (node, fh) = driver.create(ROOT, DATA_FILE)?;
    driver.fill_data(0xa5)?;
    for mib in 0..data_mib {
        driver.write(node, fh, mib << 20, 1 << 20)?;
    }
    driver.release(node, fh, false)?;
    Ok(())
}

/// The file the READs and WRITEs of a run use.
pub const DATA_FILE: &str = "data.bin";

/// Prepares `base` for one run of `peer`: the share in `base/share` (and its store in
/// `base/store`) holding `files` known files and a `data_mib` MiB data file, as
/// [`populate`] writes them for a back-end run as root. For one run as an ordinary user, the
/// files are written plain and `base` is handed over to that user; for its redirecting share,
/// `fsredirect` (its `dehydrate`, run as that user, which writes the metadata that user's
/// server reads) then moves each file's data into the store.
pub fn prepare_run_dir(
    peer: Peer,
    base: &Path,
    files: usize,
    data_mib: u64,
    fsredirect: &Path,
) -> Result<()> {
    let (share, store) = (base.join("share"), base.join("store"));
    if !peer.unprivileged() {
        return populate(
            &share,
            peer.redirects().then_some(store.as_path()),
            files,
            data_mib,
        );
    }
    populate(&share, None, files, data_mib)?;
    if peer.redirects() {
        std::fs::create_dir(&store).map_err(io_err(format!("create {}", store.display())))?;
    }
    unprivileged::hand_over(base)?;
    if peer.redirects() {
        let names = (0..files).map(file_name).chain([DATA_FILE.to_string()]);
        unprivileged::dehydrate(fsredirect, TAG, &share, &store, names)?;
    }
    Ok(())
}

fn phase(
    fe: &mut VhostFrontend,
    count: usize,
    depth: usize,
    make: impl FnMut(usize) -> Call,
    done: impl FnMut(usize, crate::vhost_frontend::Reply<'_>) -> Result<()>,
) -> Result<OpFigures> {
    let before = fe.counters();
    let start = Instant::now();
    let lat = fe.pipeline(count, depth, make, done)?;
    let elapsed = start.elapsed();
    Ok(OpFigures {
        ops_per_sec: count as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: lat.quantile_us(0.5),
        counters: fe.counters().since(&before),
    })
}

/// The workload over a connected front-end: every operation at every depth.
pub fn run_workload(fe: &mut VhostFrontend, params: &VuParams) -> Result<RunFigures> {
    let mut figures = RunFigures::default();
    let files = params.files.max(1);
    let ops = params.ops.max(1);
    let blocks = (params.data_mib << 20) / 4096;
    let chunks = (params.data_mib.max(1) << 20) / u64::from(SEQ_CHUNK);
    for (d, &depth) in DEPTHS.iter().enumerate() {
        let at = |op: VuOp| op.index();
        let mut nodes = vec![0u64; files];
        figures[at(VuOp::Lookup)][d] = phase(
            fe,
            ops,
            depth,
            |i| {
                let name = fuse_wire::name_in(&file_name(i % files));
                Call::new(Opcode::Lookup, ROOT, name)
            },
            |i, reply| {
                nodes[i % files] = fuse_wire::entry_out(reply.bytes)?.nodeid;
                Ok(())
            },
        )?;
        figures[at(VuOp::Getattr)][d] = phase(
            fe,
            ops,
            depth,
            |i| Call::new(Opcode::Getattr, nodes[i % files], fuse_wire::getattr_in()),
            |_, reply| fuse_wire::attr_out(reply.bytes).map(drop),
        )?;
        let (data, _) = fe.lookup(ROOT, DATA_FILE)?;
        let fh = fe.open(data, libc::O_RDWR)?;
        let mut rng = Rng::new();
        figures[at(VuOp::Read4k)][d] = phase(
            fe,
            ops,
            depth,
            |_| Call::read(data, fh, rng.below(blocks) * 4096, 4096),
            |_, reply| expect_len("read", 4096, reply.data_len),
        )?;
        figures[at(VuOp::Write4k)][d] = phase(
            fe,
            ops,
            depth,
            |_| Call::write(data, fh, rng.below(blocks) * 4096, 4096),
            |_, reply| expect_len("write", 4096, fuse_wire::write_out(reply.bytes)? as usize),
        )?;
        figures[at(VuOp::SeqRead)][d] = phase(
            fe,
            SEQ_REQUESTS,
            depth,
            |i| {
                let offset = (i as u64 % chunks) * u64::from(SEQ_CHUNK);
                Call::read(data, fh, offset, SEQ_CHUNK)
            },
            |_, reply| expect_len("read", SEQ_CHUNK as usize, reply.data_len),
        )?;
        fe.call(Opcode::Release, data, &fuse_wire::release_in(fh))?;
        figures[at(VuOp::SeqWrite)][d] = seq_write_phase(fe, depth, &format!("seq{depth:02}"))?;
        let created = |i: usize| format!("c{depth:02}-{i:06}");
        let mut handles = vec![(0u64, 0u64); files];
        figures[at(VuOp::Create)][d] = phase(
            fe,
            files,
            depth,
            |i| Call::new(Opcode::Create, ROOT, fuse_wire::create_in(&created(i))),
            |i, reply| {
                let (entry, fh) = fuse_wire::create_out(reply.bytes)?;
                handles[i] = (entry.nodeid, fh);
                Ok(())
            },
        )?;
        fe.pipeline(
            files,
            depth,
            |i| {
                Call::new(
                    Opcode::Release,
                    handles[i].0,
                    fuse_wire::release_in(handles[i].1),
                )
            },
            |_, _| Ok(()),
        )?;
        figures[at(VuOp::Unlink)][d] = phase(
            fe,
            files,
            depth,
            |i| Call::new(Opcode::Unlink, ROOT, fuse_wire::name_in(&created(i))),
            |_, _| Ok(()),
        )?;
    }
    Ok(figures)
}

/// Sequential 1 MiB WRITEs to new file `name`, then one FSYNC, timed together; the file is
/// released and unlinked after (untimed).
fn seq_write_phase(fe: &mut VhostFrontend, depth: usize, name: &str) -> Result<OpFigures> {
    let reply = fe.call(Opcode::Create, ROOT, &fuse_wire::create_in(name))?;
    let (entry, fh) = fuse_wire::create_out(&reply)?;
    let node = entry.nodeid;
    let before = fe.counters();
    let start = Instant::now();
    let lat = fe.pipeline(
        SEQ_REQUESTS,
        depth,
        |i| Call::write(node, fh, i as u64 * u64::from(SEQ_CHUNK), SEQ_CHUNK),
        |_, reply| {
            let n = fuse_wire::write_out(reply.bytes)? as usize;
            expect_len("write", SEQ_CHUNK as usize, n)
        },
    )?;
    fe.call(Opcode::Fsync, node, &fuse_wire::fsync_in(fh))?;
    let elapsed = start.elapsed();
    let figures = OpFigures {
        ops_per_sec: SEQ_REQUESTS as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: lat.quantile_us(0.5),
        counters: fe.counters().since(&before),
    };
    fe.call(Opcode::Release, node, &fuse_wire::release_in(fh))?;
    fe.call(Opcode::Unlink, ROOT, &fuse_wire::name_in(name))?;
    // A guest kernel forgets an unlinked, closed file at once. Without this, a server holding
    // a descriptor per node (ours when confined, without file handles) would keep the
    // file's 256 MiB of page cache, and the next run of this phase would write into memory
    // the host must find afresh: a cost of the driver, not of the server.
    fe.forget(node, 1)?;
    Ok(figures)
}

/// Fails unless a READ or WRITE moved `want` bytes.
fn expect_len(what: &str, want: usize, got: usize) -> Result<()> {
    match got == want {
        true => Ok(()),
        false => Err(BenchError::Driver(format!(
            "short {what}: {got} of {want} bytes"
        ))),
    }
}

/// One run of `peer` in a fresh directory under `base`: populate (and write back to disk),
/// start, connect, the workload, disconnect, clean up.
pub fn run_target(peer: Peer, params: &VuParams, base: &Path) -> Result<RunFigures> {
    let share = base.join("share");
    let store = base.join("store");
    std::fs::create_dir_all(base).map_err(io_err(format!("create {}", base.display())))?;
    prepare_run_dir(
        peer,
        base,
        params.files,
        params.data_mib,
        &params.fsredirect,
    )?;
    // The share's files written back first: a FSYNC would otherwise also wait for them (the
    // journal commits what came before it), more or less from run to run.
    settle(base)?;
    let launch = Launch {
        hypervisor: &params.hypervisor,
        virtiofsd: params.virtiofsd.as_ref().ok().map(PathBuf::as_path),
        sandbox: &params.sandbox,
    };
    let backend = Backend::start(
        peer,
        launch,
        &share,
        &store,
        &base.join("vu.sock"),
        &base.join("backend.log"),
    )?;
    let result = VhostFrontend::connect(&base.join("vu.sock"), &FrontendConfig::default())
        .and_then(|mut fe| run_workload(&mut fe, params));
    // The front-end is gone here (dropped in and_then), so the back-end should exit.
    let finished = backend.finish(Duration::from_secs(5));
    let figures = result?;
    finished?;
    std::fs::remove_dir_all(base).map_err(io_err(format!("remove {}", base.display())))?;
    Ok(figures)
}

/// virtiofsd's `--version` line.
pub fn virtiofsd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Every round: every target once, in rotating order.
pub fn run(params: &VuParams, base: &Path) -> Result<VhostUserSummary> {
    let mut runs: [Vec<RunFigures>; PEERS] = Default::default();
    let absent = params.virtiofsd.as_ref().err().cloned();
    // Why virtiofsd as root, and as an ordinary user, has no figures.
    let (mut virtiofsd_missing, mut virtiofsd_unprivileged_missing) = (absent.clone(), absent);
    let virtiofsd_version = params
        .virtiofsd
        .as_ref()
        .ok()
        .and_then(|b| virtiofsd_version(b));
    let rounds = params.rounds.max(1);
    let mut host = Vec::with_capacity(rounds);
    for round in 0..rounds {
        eprintln!(
            "bench: vhost-user round {} of {rounds}: the host's own calls",
            round + 1
        );
        host.push(run_host(params, &base.join(format!("vu-{round}-host")))?);
        for t in crate::runner::rotated::<PEERS>(round) {
            let peer = Peer::ALL[t];
            let missing = match peer {
                Peer::Virtiofsd => Some(&mut virtiofsd_missing),
                Peer::VirtiofsdUnprivileged => Some(&mut virtiofsd_unprivileged_missing),
                _ => None,
            };
            let skipped = peer.unprivileged() && params.unprivileged_skipped.is_some();
            if skipped || missing.as_ref().is_some_and(|why| why.is_some()) {
                continue;
            }
            eprintln!(
                "bench: vhost-user round {} of {rounds}: {}",
                round + 1,
                peer.name()
            );
            let dir = base.join(format!("vu-{round}-{t}"));
            match (run_target(peer, params, &dir), missing) {
                (Ok(f), _) => runs[t].push(f),
                (Err(e), Some(missing)) => {
                    // The peer failing leaves our columns to report, with the reason.
                    eprintln!("bench: {} failed: {e}", peer.name());
                    *missing = Some(format!(
                        "{} failed in round {}: {e}",
                        peer.name(),
                        round + 1
                    ));
                    runs[t].clear();
                    let _ = std::fs::remove_dir_all(&dir);
                }
                (Err(e), None) => return Err(e),
            }
        }
    }
    Ok(VhostUserSummary {
        runs,
        host,
        virtiofsd_missing,
        virtiofsd_unprivileged_missing,
        unprivileged_skipped: params.unprivileged_skipped.clone(),
        virtiofsd_version,
        sandbox: params.sandbox.clone(),
        params: format!(
            "{} rounds; per run and depth: {} LOOKUPs and {} GETATTRs cycling over {} \
             pre-created files, {} random 4 KiB READs and as many WRITEs of a {} MiB file, \
             {} sequential 1 MiB READs of it (from its start again at its end), {} \
             sequential 1 MiB WRITEs of a new file and one FSYNC (timed together), {} \
             CREATEs (each then RELEASEd, untimed) and {} UNLINKs",
            rounds,
            params.ops,
            params.ops,
            params.files,
            params.ops,
            params.data_mib,
            SEQ_REQUESTS,
            SEQ_REQUESTS,
            params.files,
            params.files
        ),
    })
}
