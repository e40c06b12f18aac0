//! Summaries of a run, the budget check, `BENCHMARKS.md` and its SVG chart.

use std::fmt::Write as _;

use crate::boot::{BootSummary, Contender};
use crate::fio::JOBS;
use crate::guest::{GuestSummary, OPS as GUEST_OPS};
use crate::machine::Machine;
use crate::stats::{median, paired_range, paired_ratio};
use crate::vhost_bench::{OpFigures, Peer, RunFigures, VhostUserSummary, VuOp, DEPTHS};
use crate::vmm::VmmSummary;
use crate::workload::{Figures, MetaOp};

/// Names of the four data figures, in [`DataSummary`] order.
pub const DATA_NAMES: [&str; 4] = [
    "seq write 1M",
    "seq read 1M",
    "rand read 4k",
    "rand write 4k",
];

/// One target's data figures: seq write and read in bytes/s, random read and write in IOPS.
pub type DataSummary = [f64; 4];

/// One metadata operation of one target: medians over rounds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaSummary {
    /// Operations per second.
    pub ops: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
}

/// The device-level figures of every target (`TargetKind::ALL` order).
#[derive(Debug, Clone)]
pub struct DeviceSummary {
    /// Data figures per target.
    pub data: [DataSummary; 3],
    /// Metadata figures per target, `MetaOp::ALL` order.
    pub meta: [[MetaSummary; MetaOp::ALL.len()]; 3],
    /// Rounds the medians are taken over.
    pub rounds: usize,
    /// Per target, each round's data figures (for paired ratios).
    pub data_rounds: [Vec<DataSummary>; 3],
    /// Per target, each round's metadata figures (for paired ratios).
    pub meta_rounds: [Vec<[MetaSummary; MetaOp::ALL.len()]>; 3],
    /// Per target, the median p50 latency (µs) of a request answered without any host call
    /// (NaN for the host, which has no request path).
    pub floor_us: [f64; 3],
}

impl DeviceSummary {
    /// Medians over rounds of `runs[target][round]`.
    pub fn from_runs(runs: &[Vec<Figures>; 3]) -> Self {
        let data_rounds: [Vec<DataSummary>; 3] = std::array::from_fn(|t| {
            runs[t]
                .iter()
                .map(|f| [f.seq_write, f.seq_read, f.rand_read, f.rand_write])
                .collect()
        });
        let meta_rounds: [Vec<[MetaSummary; MetaOp::ALL.len()]>; 3] = std::array::from_fn(|t| {
            runs[t]
                .iter()
                .map(|f| {
                    std::array::from_fn(|m| MetaSummary {
                        ops: f.meta[m].ops_per_sec(),
                        p50_us: f.meta[m].quantile_us(0.5),
                        p99_us: f.meta[m].quantile_us(0.99),
                    })
                })
                .collect()
        });
        let data = std::array::from_fn(|t| {
            std::array::from_fn(|i| {
                median(&data_rounds[t].iter().map(|r| r[i]).collect::<Vec<_>>())
            })
        });
        let meta = std::array::from_fn(|t| {
            std::array::from_fn(|m| {
                let of = |g: fn(&MetaSummary) -> f64| {
                    median(&meta_rounds[t].iter().map(|r| g(&r[m])).collect::<Vec<_>>())
                };
                MetaSummary {
                    ops: of(|x| x.ops),
                    p50_us: of(|x| x.p50_us),
                    p99_us: of(|x| x.p99_us),
                }
            })
        });
        let floor_us = std::array::from_fn(|t| {
            let p50s: Vec<f64> = runs[t]
                .iter()
                .filter(|f| !f.floor.is_empty())
                .map(|f| f.floor.quantile_us(0.5))
                .collect();
            if p50s.is_empty() {
                f64::NAN
            } else {
                median(&p50s)
            }
        });
        DeviceSummary {
            data,
            meta,
            rounds: runs[0].len(),
            data_rounds,
            meta_rounds,
            floor_us,
        }
    }

    /// Target `a`'s data figure `i` and target `b`'s, round by round.
    fn data_pairs(&self, i: usize, a: usize, b: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.data_rounds[a]
            .iter()
            .zip(&self.data_rounds[b])
            .map(move |(x, y)| (x[i], y[i]))
    }

    /// Target `a`'s metadata figure `g` of op `m` and target `b`'s, round by round.
    fn meta_pairs(
        &self,
        m: usize,
        a: usize,
        b: usize,
        g: fn(&MetaSummary) -> f64,
    ) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.meta_rounds[a]
            .iter()
            .zip(&self.meta_rounds[b])
            .map(move |(x, y)| (g(&x[m]), g(&y[m])))
    }

    /// Target `a`'s data figure `i` over target `b`'s, paired by round.
    pub fn data_ratio(&self, i: usize, a: usize, b: usize) -> f64 {
        paired_ratio(self.data_pairs(i, a, b))
    }

    /// The lowest and highest per-round ratio of [`DeviceSummary::data_ratio`].
    pub fn data_ratio_range(&self, i: usize, a: usize, b: usize) -> Option<(f64, f64)> {
        paired_range(self.data_pairs(i, a, b))
    }

    /// Target `a`'s metadata figure `g` of op `m` over target `b`'s, paired by round.
    pub fn meta_ratio(&self, m: usize, a: usize, b: usize, g: fn(&MetaSummary) -> f64) -> f64 {
        paired_ratio(self.meta_pairs(m, a, b, g))
    }

    /// The lowest and highest per-round ratio of [`DeviceSummary::meta_ratio`].
    pub fn meta_ratio_range(
        &self,
        m: usize,
        a: usize,
        b: usize,
        g: fn(&MetaSummary) -> f64,
    ) -> Option<(f64, f64)> {
        paired_range(self.meta_pairs(m, a, b, g))
    }
}

/// fio figures per job (`fio::JOBS` order) and target: host dir, passthrough, redirect.
#[derive(Debug, Clone)]
pub struct FioSummary {
    /// Bytes/s for sequential jobs, IOPS for random ones.
    pub values: [[f64; 3]; 4],
    /// One example command line (the others differ in --rw, --bs and --directory).
    pub example: String,
    /// Rounds the medians are taken over.
    pub rounds: usize,
    /// Each round's figures, `[job][target]` (for paired ratios).
    pub samples: Vec<[[f64; 3]; 4]>,
}

impl FioSummary {
    /// Target `a`'s figure of job `j` over target `b`'s, paired by round.
    pub fn ratio(&self, j: usize, a: usize, b: usize) -> f64 {
        paired_ratio(self.samples.iter().map(|r| (r[j][a], r[j][b])))
    }

    /// The lowest and highest per-round ratio of [`FioSummary::ratio`].
    pub fn ratio_range(&self, j: usize, a: usize, b: usize) -> Option<(f64, f64)> {
        paired_range(self.samples.iter().map(|r| (r[j][a], r[j][b])))
    }
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The command that produced the report.
    pub command: String,
    /// When, UTC.
    pub date: String,
    /// Sizes of the device workload, in words.
    pub device_params: String,
    /// Device-level figures, or why there are none.
    pub device: Result<DeviceSummary, String>,
    /// The same with the file system run as an ordinary user, or why there are none.
    pub device_unprivileged: Result<DeviceSummary, String>,
    /// fio figures, or why there are none.
    pub fio: Result<FioSummary, String>,
    /// The guest under QEMU, or why there is none.
    pub guest: Result<GuestSummary, String>,
    /// The VMM process, or why there is none.
    pub vmm: Result<VmmSummary, String>,
    /// Boot times, or why there are none.
    pub boot: Result<BootSummary, String>,
    /// Vhost-user back-ends side by side, or why there are none.
    pub vhost_user: Result<VhostUserSummary, String>,
}

/// One line of the budget.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is compared.
    pub figure: String,
    /// The measured ratio.
    pub ratio: f64,
    /// The bound, as text.
    pub budget: String,
    /// Whether the ratio is within the bound.
    pub pass: bool,
    /// A likely cause of a miss.
    pub cause: Option<&'static str>,
}

const HOST: usize = 0;
const PT: usize = 1;
const RED: usize = 2;

const CAUSE_INTENT: &str = "every redirected create and unlink also sets and clears an \
intent-log record (an xattr of a reused slot file, or its content fdatasync'd when guest tree \
and store are on different file systems: fsredirect/README.md, \"Intent log\") and changes \
both the guest tree and the store (a create makes the object and the stub, an unlink removes \
both): a redirected CREATE costs 11 host calls by path and 21 by file handle where a plain one \
costs 4 and 12, an UNLINK 7 where a plain one costs 2 (fsredirect/tests/syscalls.rs).";
const CAUSE_STUB: &str = "a redirected WRITE in place costs the host one pwrite, as a plain \
one does (fsredirect/tests/syscalls.rs), plus a futimens of the stub once per tick of the \
coarse clock (an ftruncate when it extends the file); on top come the namespace and data locks \
and the store-descriptor cache lookup, and the run-to-run noise of this shared machine.";
const CAUSE_FUSE_META: &str = "the request path, not the host calls: a request the device \
answers without any host call already takes several times the host's own call (the request \
floor, device section); a GETATTR adds one statx through the node's hot descriptor, a LOOKUP \
again of a name in use one fstatat (the server answers it; a file is pinned from its CREATE, so \
every LOOKUP measured here is one), and a LOOKUP of a node not pinned the passthrough layer's \
lookup: 7 host calls by file handle (3 without), the same for a redirected and a plain file \
(fsredirect/tests/syscalls.rs).";
const CAUSE_REDIRECT_READ: &str = "each redirected READ takes the namespace lock and its file's \
data lock (shared, so it never sees a truncate half done) and looks its object up in the \
store-descriptor cache (a mutex-guarded LRU) before the pread, which the passthrough does not; \
within the run-to-run noise of this shared machine.";
const CAUSE_READDIR: &str = "a listing is OPENDIR, READDIRs until one comes back empty and \
RELEASEDIR, each a request through the device (the request floor, device section), where the \
host's is an open, getdents64 calls and a close; each READDIR costs a seek and one getdents64 \
(fsredirect/tests/syscalls.rs), no lookup per entry.";
const CAUSE_FUSE_DATA: &str = "per-request work of the FUSE server and the passthrough layer \
(decode, handle lookup, copying through guest memory) on top of the host's own copy.";
const CAUSE_VMM_MEM: &str = "see the VMM section: RSS and PSS outside guest RAM, sampled \
while the guest runs.";
const CAUSE_VMM_START: &str = "copying the kernel and initramfs into guest memory, which is \
fresh memory: perf puts most of the main thread's start-up in that copy, and on a virtual \
machine whose host backs its memory on first touch, as this project's machines are, a first \
write to fresh memory ran at a sixth of the speed of a second or less (9 MiB: 5.3 to 7.7 ms \
against 0.8 to 1.3 ms, 2026-12-05), so the figure follows the machine's memory from run to \
run; then the dynamic loader.";

const CAUSE_VU_JOURNAL: &str = "waits on the host file system's journal: a redirected create \
or unlink changes the guest tree, the store and the intent log (an attribute set and \
cleared), several journaled changes where the passthrough makes one; the issue allows this as \
a named miss.";
const CAUSE_VU_PEER_JOURNAL: &str = "waits on the host file system's journal: each back-end's \
create or unlink is one journaled change of the share, whose commits set the pace (compare \
the two back-ends' p50 latencies and the rounds' spread); the issue allows this as a named \
miss.";
const CAUSE_VU_PEER: &str = "per-request cost on our side. First compare the kicks per \
request: profiles of both back-ends (perf, 2026-12-04) put about 90% of their time in the \
kernel, most of it a queue thread sleeping and being woken, and a back-end that finds the \
ring empty after each batch pays a kick and a wake-up per batch (what the queues' polling \
after a batch, 50 us by default, removed: 0.038 kicks per request to 0.000). Of the user \
time, about 11,700 instructions per request in the in-process device (callgrind): building \
fuse-backend-rs's Reader and Writer about 2,100, writing a GETATTR reply 1,260, our file \
system's GETATTR 2,970. For LOOKUP by file handle, add a reopen of the parent and two \
name_to_handle_at calls. Compare the rounds' spread.";
const CAUSE_VU_WRITEBACK: &str = "the machine's memory, not the back-end: on a virtual \
machine whose balloon reports free pages to its host, writes into page cache the host must \
back afresh run at about a fifth of the usual rate, and that lands on whichever back-end \
runs when the free memory is cold (compare the spreads of the other back-ends).";
const CAUSE_VU_REDIRECT: &str = "the redirecting layer's own work on top of the passthrough \
(namespace lock, node table, store descriptors; for a write, the stub's size and time).";

/// Which side of its bound a budgeted figure must be on.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// A throughput: at least the bound.
    AtLeast(f64),
    /// A latency: at most the bound.
    AtMost(f64),
}

/// One budget line: `ratio` is the median of per-round ratios spread over `rounds`. It is met
/// when a round reaches the bound (on these shared machines a figure whose rounds straddle its
/// target counts as met); the text shows the spread.
fn check(
    figure: String,
    ratio: f64,
    rounds: Option<(f64, f64)>,
    bound: Bound,
    cause: &'static str,
) -> Check {
    let (lo, hi) = rounds.unwrap_or((ratio, ratio));
    let (pass, sign, value) = match bound {
        Bound::AtLeast(b) => (hi >= b, "≥", b),
        Bound::AtMost(b) => (lo <= b, "≤", b),
    };
    let budget = match rounds {
        Some(_) => format!("{sign} {value:.3} (rounds {}–{})", fr(lo), fr(hi)),
        None => format!("{sign} {value:.3}"),
    };
    Check {
        figure,
        ratio,
        budget,
        pass,
        cause: (!pass).then_some(cause),
    }
}

/// The device budget of one set of device rounds; `label` follows "device" in each figure's
/// name (empty for the file system run as root).
fn device_checks(d: &DeviceSummary, label: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let data = |i: usize, a: usize, b: usize| (d.data_ratio(i, a, b), d.data_ratio_range(i, a, b));
    for (i, name) in DATA_NAMES.iter().enumerate() {
        let cause = if i == 0 || i == 3 {
            CAUSE_STUB
        } else {
            CAUSE_REDIRECT_READ
        };
        let (ratio, rounds) = data(i, RED, PT);
        checks.push(check(
            format!("device{label} {name}: redirect / passthrough"),
            ratio,
            rounds,
            Bound::AtLeast(0.90),
            cause,
        ));
    }
    for (i, name) in DATA_NAMES.iter().enumerate().take(2) {
        let (ratio, rounds) = data(i, RED, HOST);
        checks.push(check(
            format!("device{label} {name}: redirect / host syscalls"),
            ratio,
            rounds,
            Bound::AtLeast(0.90),
            if i == 0 { CAUSE_STUB } else { CAUSE_FUSE_DATA },
        ));
    }
    for (m, op) in MetaOp::ALL.iter().enumerate() {
        let cause = match op {
            MetaOp::Create | MetaOp::Unlink => CAUSE_INTENT,
            MetaOp::Readdir => CAUSE_READDIR,
            _ => CAUSE_FUSE_META,
        };
        let ops = |x: &MetaSummary| x.ops;
        checks.push(check(
            format!(
                "device{label} {} ops/s: redirect / host syscalls",
                op.name()
            ),
            d.meta_ratio(m, RED, HOST, ops),
            d.meta_ratio_range(m, RED, HOST, ops),
            Bound::AtLeast(0.40),
            cause,
        ));
    }
    for (m, op) in MetaOp::ALL.iter().enumerate() {
        if !matches!(op, MetaOp::Create | MetaOp::Unlink) {
            continue;
        }
        let p50 = |x: &MetaSummary| x.p50_us;
        checks.push(check(
            format!(
                "device{label} {} p50 latency: redirect / passthrough",
                op.name()
            ),
            d.meta_ratio(m, RED, PT, p50),
            d.meta_ratio_range(m, RED, PT, p50),
            Bound::AtMost(1.2),
            CAUSE_INTENT,
        ));
    }
    checks
}

/// The data and metadata tables of one set of device rounds, and its request floor.
fn device_tables(s: &mut String, d: &DeviceSummary) {
    s.push_str(
        "| figure | host syscalls | passthrough | redirect | passthrough / host | \
         redirect / host | redirect / passthrough |\n|---|---|---|---|---|---|---|\n",
    );
    for (i, name) in DATA_NAMES.iter().enumerate() {
        let fmt = |v: f64| {
            if i < 2 {
                format!("{:.0} MB/s", v / 1e6)
            } else {
                format!("{v:.0} IOPS")
            }
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt(d.data[HOST][i]),
            fmt(d.data[PT][i]),
            fmt(d.data[RED][i]),
            fr(d.data_ratio(i, PT, HOST)),
            fr(d.data_ratio(i, RED, HOST)),
            fr(d.data_ratio(i, RED, PT)),
        );
    }
    s.push_str(
        "\nMetadata: ops/s (p50 / p99 latency in µs). Each of the files is created (and \
         kept open), looked up, stat'ed and looked up again, in that order, one phase after \
         the other; the first lookup of a file follows its create, the second its getattr, \
         as the kernel's revalidation of a name in use does. Readdir is one whole listing \
         (open, read to the end, close).\n\n\
         | op | host syscalls | passthrough | redirect | passthrough / host | \
         redirect / host | redirect / passthrough |\n|---|---|---|---|---|---|---|\n",
    );
    for (m, op) in MetaOp::ALL.iter().enumerate() {
        let cell = |t: usize| {
            let x = d.meta[t][m];
            format!("{:.0} ({:.1} / {:.1})", x.ops, x.p50_us, x.p99_us)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            op.name(),
            cell(HOST),
            cell(PT),
            cell(RED),
            fr(d.meta_ratio(m, PT, HOST, |x| x.ops)),
            fr(d.meta_ratio(m, RED, HOST, |x| x.ops)),
            fr(d.meta_ratio(m, RED, PT, |x| x.ops)),
        );
    }
    if d.floor_us[PT].is_finite() {
        let bound = |op: MetaOp| {
            let m = MetaOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
            let host = d.meta[HOST][m].p50_us;
            host / (host + d.floor_us[PT])
        };
        let _ = write!(
            s,
            "\nRequest floor: a request the device answers without any host call (BMAP, \
             answered ENOSYS: the queue, the FUSE decoding and the reply alone) takes \
             {:.2} µs (p50) on the passthrough share and {:.2} µs on the redirecting one. \
             A metadata request costs at least that plus its own host calls, so by p50 \
             latency no FUSE device can reach more than {:.2} of the host's lookup rate, \
             {:.2} of its getattr rate or {:.2} of its rate of lookups again here.\n",
            d.floor_us[PT],
            d.floor_us[RED],
            bound(MetaOp::Lookup),
            bound(MetaOp::Getattr),
            bound(MetaOp::LookupAgain),
        );
    }
    s.push('\n');
}

/// The back-ends a budget compares: virtiofsd, our passthrough and our redirecting share, run
/// the same way, and the words that set their figures apart from another such group.
struct VuGroup {
    virtiofsd: Peer,
    passthrough: Peer,
    redirect: Peer,
    /// Empty for the servers run as root; `, not root` for those run as an ordinary user.
    label: &'static str,
}

/// What the host's own calls of the vhost-user part are, before their first table.
const HOST_CALLS_TEXT: &str = "Against the host's own calls: in every round, before the \
    back-ends, one thread of the bench makes on a share populated as the plain shares are the \
    calls a back-end makes to serve each request (`fstatat` in the share's directory for a \
    LOOKUP, `statx` of an open file for a GETATTR, `pread` and `pwrite` of 4 KiB at the same \
    offsets, `pread` of 1 MiB in order, `pwrite` of 1 MiB in order and one `fsync` timed \
    together, `openat` with `O_CREAT | O_EXCL` for a CREATE, `unlinkat` for an UNLINK), one \
    at a time, so one host figure stands for both depths. Each ratio is the median over \
    rounds of the back-end's figure over the host's in the same round.\n\n";

/// The groups, in report order: the servers run as root, then as an ordinary user.
const VU_GROUPS: [VuGroup; 2] = [
    VuGroup {
        virtiofsd: Peer::Virtiofsd,
        passthrough: Peer::OursPassthrough,
        redirect: Peer::OursRedirect,
        label: "",
    },
    VuGroup {
        virtiofsd: Peer::VirtiofsdUnprivileged,
        passthrough: Peer::OursPassthroughUnprivileged,
        redirect: Peer::OursRedirectUnprivileged,
        label: ", not root",
    },
];

/// The vhost-user budget, for the servers run as root and for those run as an ordinary user:
/// our passthrough at least virtiofsd's figure, redirect at least 0.9 of our passthrough
/// (CREATE and UNLINK: p50 latency at most 1.2x), at 1 and 16 in flight. A figure whose
/// per-round ratios reach the target counts as met.
fn vhost_user_checks(v: &VhostUserSummary) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check =
        |figure: String, a: Peer, b: Peer, f: &dyn Fn(&RunFigures) -> f64, bound: f64, cause| {
            let (a, b) = (a.index(), b.index());
            let (Some(ratio), Some(rounds)) = (v.ratio(a, b, f), v.ratio_range(a, b, f)) else {
                return;
            };
            // Above 1 is better for a throughput, below 1 for a latency.
            let bound = match figure.contains("latency") {
                true => Bound::AtMost(bound),
                false => Bound::AtLeast(bound),
            };
            checks.push(self::check(figure, ratio, Some(rounds), bound, cause));
        };
    for group in &VU_GROUPS {
        let label = group.label;
        for (d, depth) in DEPTHS.iter().enumerate() {
            for (o, &op) in VuOp::ALL.iter().enumerate() {
                let figure = |r: &RunFigures| op.figure(&r[o][d]);
                let journal = matches!(op, VuOp::Create | VuOp::Unlink);
                check(
                    format!(
                        "vhost-user{label} {} {}, {depth} in flight: ours passthrough / virtiofsd",
                        op.name(),
                        op.unit()
                    ),
                    group.passthrough,
                    group.virtiofsd,
                    &figure,
                    1.0,
                    match op {
                        VuOp::Create | VuOp::Unlink => CAUSE_VU_PEER_JOURNAL,
                        VuOp::SeqWrite => CAUSE_VU_WRITEBACK,
                        _ => CAUSE_VU_PEER,
                    },
                );
                if journal {
                    check(
                        format!(
                            "vhost-user{label} {} p50 latency, {depth} in flight: redirect / \
                             passthrough",
                            op.name()
                        ),
                        group.redirect,
                        group.passthrough,
                        &|r: &RunFigures| r[o][d].p50_us,
                        1.2,
                        CAUSE_VU_JOURNAL,
                    );
                } else {
                    check(
                        format!(
                            "vhost-user{label} {} {}, {depth} in flight: redirect / passthrough",
                            op.name(),
                            op.unit()
                        ),
                        group.redirect,
                        group.passthrough,
                        &figure,
                        0.9,
                        CAUSE_VU_REDIRECT,
                    );
                }
            }
        }
    }
    checks
}

/// A ratio with enough digits to tell small ones apart.
/// The changes made to the default boot for the time to `/init`, each measured before and
/// after (written down once: the report of a later run shows only its own figures).
const BOOT_STEPS: &str = "Changes to the default boot, each measured before and after with \
`./bench.sh --boot-only --boot-runs 1` in the emulated VT-x test host on 2026-12-03 (guest \
clock, VMM start to `/init`):

| change | ours | floor | QEMU microvm |
|---|---|---|---|
| before: `console=ttyS0 reboot=k panic=-1 i8042.noaux` | 3.647 s | 3.546 s | 5.060 s |
| `quiet` on the command line (every console byte is a VM exit; the boot log was half the time) | 1.674 s | 1.662 s | 2.696 s |
| `i8042.nokbd` as well (not adopted: within the run-to-run spread) | 1.667 s | 1.667 s | 2.696 s |

The floor itself first booted 300 ms slower than ours (3.849 s against 3.695 s): without the \
MSRs a BIOS leaves set (fast strings, write-back MTRR default) and the TSC-deadline CPUID bit \
its guest ran slower string operations and timer set-up. It sets them now, as ours does.

";

/// Most guest-clock time our VMM (without a share) may add to the floor's boot.
const BOOT_FLOOR_BUDGET_S: f64 = 0.060;

/// One budgeted boot comparison: ours against a peer, to `/init` or to exit.
struct BootComparison {
    /// The peer's name in the report.
    peer: &'static str,
    /// `/init` or `exit`.
    what: &'static str,
    /// Our time and the peer's, seconds.
    ours_s: f64,
    theirs_s: f64,
    /// Most our time may exceed the peer's (the floor), or `None`: ours must be ahead (QEMU).
    most_s: Option<f64>,
    /// Likely cause of a miss.
    cause: &'static str,
}

impl BootComparison {
    fn diff_s(&self) -> f64 {
        self.ours_s - self.theirs_s
    }

    fn pass(&self) -> bool {
        match self.most_s {
            Some(most) => self.diff_s() <= most,
            None => self.diff_s() < 0.0,
        }
    }
}

/// The boot budget's comparisons, one per peer with figures and per end point; the peers
/// without figures are named second.
fn boot_comparisons(b: &BootSummary) -> (Vec<BootComparison>, Vec<&'static str>) {
    let (mut done, mut missing) = (Vec::new(), Vec::new());
    let Some(ours) = b.figure(Contender::Ours) else {
        return (done, missing);
    };
    let peers = [
        (
            Contender::Floor,
            "floor",
            Some(BOOT_FLOOR_BUDGET_S),
            CAUSE_BOOT_FLOOR,
        ),
        (Contender::Qemu, "QEMU microvm", None, CAUSE_BOOT_QEMU),
    ];
    for (contender, peer, most_s, cause) in peers {
        let Some(theirs) = b.figure(contender) else {
            missing.push(peer);
            continue;
        };
        for (what, ours_s, theirs_s) in [
            ("/init", ours.init_s, theirs.init_s),
            ("exit", ours.exit_s, theirs.exit_s),
        ] {
            done.push(BootComparison {
                peer,
                what,
                ours_s,
                theirs_s,
                most_s,
                cause,
            });
        }
    }
    (done, missing)
}

/// The boot budget as checks (figures in ms of the boot clock).
fn boot_checks(b: &BootSummary) -> Vec<Check> {
    boot_comparisons(b)
        .0
        .into_iter()
        .map(|c| Check {
            figure: format!("boot, VMM start to {}: ours − {}, ms", c.what, c.peer),
            ratio: c.diff_s() * 1e3,
            budget: match c.most_s {
                Some(most) => format!("≤ {:.3}", most * 1e3),
                None => "< 0.000".into(),
            },
            pass: c.pass(),
            cause: Some(c.cause),
        })
        .collect()
}

const CAUSE_BOOT_FLOOR: &str = "what our VMM does beyond the floor before and during the boot: \
its seccomp filters (the boot section gives what they add, and ours without them against the \
floor; where the filters' time goes is not pinned down), the devices the guest probes, such \
as the i8042, its threads and its own start-up before the first KVM_RUN: compare the console \
logs named in the boot section.";

const CAUSE_BOOT_QEMU: &str = "QEMU's own start-up (dynamic loading, machine set-up, qboot \
firmware) against ours: compare the two console logs named in the boot section.";

/// The boot budget, line by line: ours against the floor (within
/// [`BOOT_FLOOR_BUDGET_S`]) and against QEMU microvm (ahead), to `/init` and to exit.
fn boot_verdicts(b: &BootSummary) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(ours) = b.figure(Contender::Ours) else {
        lines.push("ours gave no figure: nothing to compare".into());
        return lines;
    };
    let (comparisons, missing) = boot_comparisons(b);
    for c in &comparisons {
        let budget = match c.most_s {
            Some(most) => format!("budget ≤ {:.0} ms", most * 1e3),
            None => "budget: ahead (negative)".into(),
        };
        lines.push(format!(
            "ours − {} to {}: {:+.1} ms (ours / {} {:.3}); {budget}: {}",
            c.peer,
            c.what,
            c.diff_s() * 1e3,
            c.peer,
            c.ours_s / c.theirs_s,
            if c.pass() { "PASS" } else { "**MISS**" }
        ));
    }
    for peer in missing {
        lines.push(format!(
            "{peer} gave no figure (see the table): ours − {peer} not measured"
        ));
    }
    if let Some(open) = b.figure(Contender::OursUnfiltered) {
        lines.push(format!(
            "the seccomp filters add {:+.1} ms to /init and {:+.1} ms to exit (ours against \
             ours with --seccomp none)",
            (ours.init_s - open.init_s) * 1e3,
            (ours.exit_s - open.exit_s) * 1e3
        ));
        if let Some(floor) = b.figure(Contender::Floor) {
            lines.push(format!(
                "without them, ours − floor: {:+.1} ms to /init and {:+.1} ms to exit",
                (open.init_s - floor.init_s) * 1e3,
                (open.exit_s - floor.exit_s) * 1e3
            ));
        }
    }
    if let Some(share) = b.figure(Contender::OursShare) {
        lines.push(format!(
            "the default share adds {:+.1} ms to /init and {:+.1} ms to exit",
            (share.init_s - ours.init_s) * 1e3,
            (share.exit_s - ours.exit_s) * 1e3
        ));
        if let Some(sandboxed) = b.figure(Contender::OursShareSandboxed) {
            lines.push(format!(
                "the sandbox (--sandbox namespace) adds {:+.1} ms to /init and {:+.1} ms to \
                 exit (ours with the share in it against ours with the share)",
                (sandboxed.init_s - share.init_s) * 1e3,
                (sandboxed.exit_s - share.exit_s) * 1e3
            ));
        }
    }
    let spreads: Vec<(f64, &str)> = b
        .results
        .iter()
        .filter_map(|r| r.spread_s().map(|d| (d, r.contender.label())))
        .collect();
    if b.results.first().is_some_and(|r| r.runs.len() < 2) {
        lines.push("run to run: one run only (--boot-runs 1), no spread measured".into());
    } else if let Some((worst, who)) = spreads
        .iter()
        .copied()
        .reduce(|a, c| if c.0 > a.0 { c } else { a })
    {
        lines.push(format!(
            "run to run: the runs agree within {:.1} ms (largest difference: {who}){}",
            worst * 1e3,
            if b.deterministic {
                "; the test host's clock counts emulated instructions, and what varies is \
                 the order of the test host's own threads and interrupts"
            } else {
                ""
            }
        ));
    }
    lines
}

fn fr(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

/// A table cell for a figure over rounds: the median and the spread, or a dash without runs.
fn spread_cell(spread: Option<(f64, f64, f64)>, digits: usize) -> String {
    match spread {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "—".into(),
    }
}

/// One vhost-user table: a column per back-end of `peers` (median and spread over rounds), then
/// a column per ratio `(label, a, b)` of `a`'s figure to `b`'s; a row per operation and depth,
/// p50 latencies and notifications per request; then the runs per column.
fn vhost_user_table(
    s: &mut String,
    v: &VhostUserSummary,
    peers: &[Peer],
    ratios: &[(&str, Peer, Peer)],
) {
    let mut header = String::from("| metric |");
    for peer in peers {
        let _ = write!(header, " {} |", peer.name());
    }
    for (label, _, _) in ratios {
        let _ = write!(header, " {label} |");
    }
    let _ = writeln!(
        s,
        "{header}\n|---|{}",
        "---|".repeat(peers.len() + ratios.len())
    );
    let mut row = |label: String, f: &dyn Fn(&RunFigures) -> f64, digits: usize| {
        let mut line = format!("| {label} |");
        for peer in peers {
            let _ = write!(
                line,
                " {} |",
                spread_cell(v.spread(peer.index(), f), digits)
            );
        }
        for (_, a, b) in ratios {
            let ratio = v.ratio(a.index(), b.index(), f).map(fr);
            let _ = write!(line, " {} |", ratio.unwrap_or_else(|| "—".into()));
        }
        let _ = writeln!(s, "{line}");
    };
    for (d, depth) in DEPTHS.iter().enumerate() {
        for (o, &op) in VuOp::ALL.iter().enumerate() {
            row(
                format!("{} {}, {depth} in flight", op.name(), op.unit()),
                &|r: &RunFigures| op.figure(&r[o][d]),
                0,
            );
        }
        for (o, op) in VuOp::ALL.iter().enumerate() {
            if op.is_sequential() {
                continue;
            }
            row(
                format!("{} p50 latency µs, {depth} in flight", op.name()),
                &|r: &RunFigures| r[o][d].p50_us,
                1,
            );
        }
        let per_request = |r: &RunFigures, f: fn(&crate::vhost_frontend::Counters) -> u64| {
            let (n, req) = r.iter().fold((0, 0), |(n, req), op| {
                (n + f(&op[d].counters), req + op[d].counters.requests)
            });
            n as f64 / (req as f64).max(1.0)
        };
        row(
            format!("kicks per request, {depth} in flight"),
            &|r: &RunFigures| per_request(r, |c| c.kicks),
            3,
        );
        row(
            format!("interrupts per request, {depth} in flight"),
            &|r: &RunFigures| per_request(r, |c| c.interrupts),
            3,
        );
    }
    let _ = writeln!(
        s,
        "\nKicks are the driver's writes to the request queue's kick eventfd, interrupts the \
         back-end's signals of its call eventfd (the eventfd counter summed), both over the \
         timed phases at that depth. Runs per column: {}.\n",
        peers
            .iter()
            .map(|p| v.runs[p.index()].len().to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    );
}

/// One group's back-ends against the host's own calls ([`crate::vhost_host`]): a row per
/// operation (its rate, then its p50 latency), the host's figure (median and spread over
/// rounds), then each back-end's figure over the host's, at each depth.
fn host_table(s: &mut String, v: &VhostUserSummary, group: &VuGroup) {
    if v.host.is_empty() {
        s.push_str("The host's own calls were not measured in this run.\n\n");
        return;
    }
    let peers = [
        ("virtiofsd", group.virtiofsd),
        ("passthrough", group.passthrough),
        ("redirect", group.redirect),
    ];
    let mut header = String::from("| metric | host syscalls |");
    for depth in DEPTHS {
        for (name, _) in &peers {
            let _ = write!(header, " {name} / host, {depth} in flight |");
        }
    }
    let _ = writeln!(
        s,
        "{header}\n|---|---|{}",
        "---|".repeat(DEPTHS.len() * peers.len())
    );
    let mut row = |label: String, o: usize, f: &dyn Fn(&OpFigures) -> f64, digits: usize| {
        let host = spread_cell(v.host_spread(|h| f(&h[o])), digits);
        let mut line = format!("| {label} | {host} |");
        for d in 0..DEPTHS.len() {
            for (_, peer) in &peers {
                let ratio = v.host_ratio(peer.index(), |r| f(&r[o][d]), |h| f(&h[o]));
                let _ = write!(line, " {} |", ratio.map(fr).unwrap_or_else(|| "—".into()));
            }
        }
        let _ = writeln!(s, "{line}");
    };
    for (o, &op) in VuOp::ALL.iter().enumerate() {
        row(
            format!("{} {}", op.name(), op.unit()),
            o,
            &|f| op.figure(f),
            0,
        );
        if !op.is_sequential() {
            row(format!("{} p50 latency µs", op.name()), o, &|f| f.p50_us, 2);
        }
    }
    let _ = writeln!(
        s,
        "\nHost runs: {}. Rates below 1 and latencies above 1 are slower than the host's \
         own calls.\n",
        v.host.len()
    );
}

impl Report {
    /// The budget lines, each with its verdict.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Ok(d) = &self.device {
            checks.extend(device_checks(d, ""));
        }
        if let Ok(d) = &self.device_unprivileged {
            checks.extend(device_checks(d, ", not root"));
        }
        if let Ok(fio) = &self.fio {
            for (j, job) in JOBS.iter().enumerate() {
                let cause = if job.rw.contains("write") {
                    CAUSE_STUB
                } else {
                    CAUSE_REDIRECT_READ
                };
                checks.push(check(
                    format!("fio {}: redirect / passthrough mount", job.name),
                    fio.ratio(j, RED, PT),
                    fio.ratio_range(j, RED, PT),
                    Bound::AtLeast(0.90),
                    cause,
                ));
            }
        }
        if let Ok(v) = &self.vhost_user {
            checks.extend(vhost_user_checks(v));
        }
        if let Ok(b) = &self.boot {
            checks.extend(boot_checks(b));
        }
        if let Ok(vmm) = &self.vmm {
            checks.push(Check {
                figure: "VMM memory beyond guest RAM (PSS), MiB".into(),
                ratio: vmm.pss_mib,
                budget: "≤ 5.000".into(),
                pass: vmm.pss_mib <= 5.0,
                cause: Some(CAUSE_VMM_MEM),
            });
            checks.push(Check {
                figure: "VMM CPU time (all threads), process start to first KVM_RUN, ms".into(),
                ratio: vmm.cpu_to_entry_ms,
                budget: "< 10.000".into(),
                pass: vmm.cpu_to_entry_ms < 10.0,
                cause: Some(CAUSE_VMM_START),
            });
        }
        checks
    }

    /// The chart's rows: label, passthrough / host, redirect / host, the budget against the
    /// host if there is one.
    fn chart_rows(&self) -> Vec<(String, f64, f64, Option<f64>)> {
        let mut rows: Vec<(String, f64, f64, Option<f64>)> = Vec::new();
        if let Ok(d) = &self.device {
            rows.extend(DATA_NAMES.iter().enumerate().map(|(i, name)| {
                (
                    format!("device {name}"),
                    d.data_ratio(i, PT, HOST),
                    d.data_ratio(i, RED, HOST),
                    (i < 2).then_some(0.90),
                )
            }));
            for (m, op) in MetaOp::ALL.iter().enumerate() {
                rows.push((
                    format!("device {}", op.name()),
                    d.meta_ratio(m, PT, HOST, |x| x.ops),
                    d.meta_ratio(m, RED, HOST, |x| x.ops),
                    Some(0.40),
                ));
            }
        }
        if let Ok(fio) = &self.fio {
            for (j, job) in JOBS.iter().enumerate() {
                rows.push((
                    format!("fio {}", job.name),
                    fio.ratio(j, PT, HOST),
                    fio.ratio(j, RED, HOST),
                    None,
                ));
            }
        }
        rows
    }

    /// The chart of the main ratios against the host, as an SVG document.
    pub fn svg(&self) -> String {
        let rows = self.chart_rows();
        let (label_w, plot_w, row_h, top) = (170.0, 520.0, 34.0, 56.0);
        let max = 1.25_f64;
        let bottom = top + row_h * rows.len() as f64;
        let height = bottom + 44.0;
        let width = label_w + plot_w + 90.0;
        let x = |r: f64| label_w + plot_w * (r.min(max) / max);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(
            s,
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Throughput as a \
             fraction of the host's own syscalls (same run, {})</text>\n\
             <rect x=\"{label_w}\" y=\"30\" width=\"12\" height=\"10\" fill=\"#8da0cb\"/>\
             <text x=\"{}\" y=\"39\">passthrough / host</text>\n\
             <rect x=\"{}\" y=\"30\" width=\"12\" height=\"10\" fill=\"#e78a3c\"/>\
             <text x=\"{}\" y=\"39\">redirect / host</text>\n\
             <line x1=\"{}\" y1=\"29\" x2=\"{}\" y2=\"41\" stroke=\"#c00\" stroke-width=\"2\" \
             stroke-dasharray=\"3,2\"/><text x=\"{}\" y=\"39\">budget, redirect / host</text>",
            self.date,
            label_w + 16.0,
            label_w + 150.0,
            label_w + 166.0,
            label_w + 280.0,
            label_w + 280.0,
            label_w + 288.0
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0, 1.25] {
            let tx = x(tick);
            let _ = writeln!(
                s,
                "<line x1=\"{tx}\" y1=\"{top}\" x2=\"{tx}\" y2=\"{}\" stroke=\"{}\"/>\
                 <text x=\"{tx}\" y=\"{}\" text-anchor=\"middle\">{tick:.2}</text>",
                bottom,
                if tick == 1.0 { "#333" } else { "#ddd" },
                bottom + 14.0
            );
        }
        for (i, (label, pt, red, budget)) in rows.iter().enumerate() {
            let y = top + row_h * i as f64;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
                label_w - 8.0,
                y + 20.0
            );
            for (k, (r, color)) in [(*pt, "#8da0cb"), (*red, "#e78a3c")].iter().enumerate() {
                let by = y + 4.0 + 13.0 * k as f64;
                let clipped = if *r > max { "+" } else { "" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{by}\" width=\"{:.1}\" height=\"12\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{}\">{}{clipped}</text>",
                    x(*r) - label_w,
                    x(*r) + 4.0,
                    by + 10.0,
                    fr(*r)
                );
            }
            if let Some(b) = budget {
                let _ = writeln!(
                    s,
                    "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#c00\" \
                     stroke-width=\"2\" stroke-dasharray=\"3,2\"/>",
                    x(*b),
                    y + 2.0,
                    y + row_h - 2.0
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\" fill=\"#555\">Bars past 1.25 are cut (marked +). \
             Budget against passthrough: see BENCHMARKS.md.</text>",
            bottom + 36.0
        );
        s.push_str("</svg>\n");
        s
    }

    /// The whole of `BENCHMARKS.md`.
    pub fn markdown(&self, chart_path: &str) -> String {
        let mut s = String::new();
        s.push_str(HEADER);
        let m = &self.machine;
        let _ = write!(
            s,
            "## Last run\n\n\
             - Date: {}\n- Command: `{}`\n- Machine: {} × {} (nproc {}), {} memory, kernel {}\n\
             - Host kind: {}\n- Load average at the start (1 / 5 / 15 min): {}\n\
             - Device workload: {}\n\n\
             Every figure below is a ratio against a baseline measured in the same run on the \
             same machine. The machine is shared (2 cores, other builds running): absolute \
             numbers are noisy and only shown for reference. Metadata figures (create, unlink) wait \
             on the host file system's journal and vary most from run to run.\n\n![ratios]({chart_path})\n\n",
            self.date,
            self.command,
            m.cpu,
            m.cpus,
            m.cpus,
            m.memory,
            m.kernel,
            m.host_kind,
            m.load,
            self.device_params
        );
        self.budget_section(&mut s);
        self.device_section(&mut s);
        self.fio_section(&mut s);
        self.guest_section(&mut s);
        self.vmm_section(&mut s);
        self.boot_section(&mut s);
        self.vhost_user_section(&mut s);
        s.push_str(NOT_YET);
        s
    }

    fn vhost_user_section(&self, s: &mut String) {
        s.push_str("## Vhost-user back-ends: virtiofsd and ours on the same request stream\n\n");
        let v = match &self.vhost_user {
            Ok(v) => v,
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
                return;
            }
        };
        let peer = match (&v.virtiofsd_version, &v.virtiofsd_missing) {
            (_, Some(why)) => format!("**virtiofsd has no figures in this run: {why}.**"),
            (Some(version), None) => format!(
                "virtiofsd: `{version}`, built from crates.io by \
                `bench/build-virtiofsd.sh`, run as `virtiofsd --socket-path SOCK --shared-dir DIR \
                --sandbox={} --seccomp=kill --cache=auto --log-level=error` (confined as \
                ours is).",
                v.sandbox
            ),
            (None, None) => "virtiofsd: version unknown.".into(),
        };
        let _ = write!(
            s,
            "A vhost-user front-end in the `bench` process (`bench/src/vhost_frontend.rs`) \
             drives each back-end process over its Unix socket as a VMM would: features \
             (VERSION_1, PROTOCOL_FEATURES, EVENT_IDX, MQ, REPLY_ACK), guest memory in a \
             memfd shared with SET_MEM_TABLE, the hiprio queue and one request queue, FUSE \
             INIT; then FUSE requests on the request queue, encoded as the in-process \
             driver encodes them, with 1 or 16 in flight, a kick when the device's \
             avail_event asks for one, and a wait on the call eventfd. Ours: `hypervisor \
             vhost-user-fs --socket SOCK --share tag=bench,dir=DIR[,store=STORE] --sandbox {}`, \
             under its seccomp filters; the last column is the same \
             passthrough with `--sandbox none --seccomp none`, and its ratio column is what \
             the confinement costs (below 1: confined is slower); the request-pool column is \
             the confined passthrough with `--thread-pool-size {}` (each request handed to \
             one of that many threads; the default is none), and its ratio column is what \
             the pool gains (above 1) or costs. {peer} \
             Every round runs each back-end once, in rotating order, each started fresh on \
             a fresh share holding the same files (the redirecting share's written through \
             the redirecting file system, so their data is in the store), written back to \
             disk before it starts. {}. Each cell: \
             the median over rounds (min–max); ratios are medians of the per-round ratios \
             (ops/s: above 1 means ours is faster).\n\n",
            v.sandbox,
            crate::vhost_bench::POOL_THREADS,
            v.params
        );
        vhost_user_table(
            s,
            v,
            &Peer::ALL[..5],
            &[
                (
                    "passthrough / virtiofsd",
                    Peer::OursPassthrough,
                    Peer::Virtiofsd,
                ),
                ("redirect / virtiofsd", Peer::OursRedirect, Peer::Virtiofsd),
                (
                    "passthrough / unconfined",
                    Peer::OursPassthrough,
                    Peer::OursUnconfined,
                ),
                (
                    "request pool / passthrough",
                    Peer::OursPooled,
                    Peer::OursPassthrough,
                ),
            ],
        );
        s.push_str(HOST_CALLS_TEXT);
        host_table(s, v, &VU_GROUPS[0]);
        let _ = write!(
            s,
            "### Servers not run as root\n\n\
             The same request stream, with virtiofsd and ours run as `nobody` (uid {}). \
             Neither may keep inodes as file handles (that takes CAP_DAC_READ_SEARCH), so \
             each holds a descriptor per inode the guest knows. Both run under their \
             seccomp filters and in sandbox mode `{}` (each makes its namespaces inside a \
             user namespace of its own; with `--vu-sandbox chroot`, which needs root, both \
             run without a sandbox). Each share is written as \
             root and handed over to that user; the redirecting share's files then go to \
             the store through `fsredirect dehydrate` run as that user, which writes their \
             metadata under `user.fsredirect`, where a server that is not root keeps it. {}\n\n",
            crate::unprivileged::UID,
            Peer::OursPassthroughUnprivileged.sandbox(&v.sandbox),
            match (&v.unprivileged_skipped, &v.virtiofsd_unprivileged_missing) {
                (Some(why), _) => format!("**Not measured in this run: {why}.**"),
                (None, Some(why)) => {
                    format!("**virtiofsd run as `nobody` has no figures: {why}.**")
                }
                (None, None) => String::new(),
            }
        );
        vhost_user_table(
            s,
            v,
            &Peer::ALL[5..],
            &[
                (
                    "passthrough / virtiofsd",
                    Peer::OursPassthroughUnprivileged,
                    Peer::VirtiofsdUnprivileged,
                ),
                (
                    "redirect / virtiofsd",
                    Peer::OursRedirectUnprivileged,
                    Peer::VirtiofsdUnprivileged,
                ),
                (
                    "redirect / passthrough",
                    Peer::OursRedirectUnprivileged,
                    Peer::OursPassthroughUnprivileged,
                ),
            ],
        );
        s.push_str(
            "Against the host's own calls (the same host runs as above, made as root: the \
             calls a server makes cost the same whoever makes them):\n\n",
        );
        host_table(s, v, &VU_GROUPS[1]);
    }

    fn guest_section(&self, s: &mut String) {
        s.push_str("## Real guest: QEMU (TCG) over our vhost-user back-end\n\n");
        let g = match &self.guest {
            Ok(g) => g,
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
                return;
            }
        };
        let _ = write!(
            s,
            "The project's guest image under QEMU's software CPU (`-accel tcg`, microvm, \
             512 MiB), its Linux virtio-fs driver on two `hypervisor vhost-user-fs` back-ends: \
             a passthrough share and a redirecting one, mounted side by side. The guest runs \
             the `bench-fs` scenario (`fsr.arg={}`: {} rounds; in each, {} MiB with `dd bs=1M` \
             then `fsync`, read back cold, {} files made by one `touch`, listed cold with \
             `ls -l`, removed by one `rm`), on one share then the other. The host times each \
             step from its begin and end lines on the serial console (the guest kernel has \
             only a jiffies clock). Every guest instruction is emulated, so absolute figures \
             say little; the ratio compares the two shares under the same guest. Reported, \
             not budgeted. Medians of {} rounds (the ratio: of the ratios within each round, \
             and the shares take turns going first); the whole QEMU run took {:.1} s.\n\n\
             | step | passthrough share | redirecting share | redirect / passthrough |\n\
             |---|---|---|---|\n",
            g.params.arg(),
            g.params.rounds,
            g.params.mib,
            g.params.files,
            g.params.rounds,
            g.elapsed.as_secs_f64()
        );
        for (o, op) in GUEST_OPS.iter().enumerate() {
            let fmt = |v: f64| {
                if op.bytes {
                    format!("{:.1} MB/s", v / 1e6)
                } else {
                    format!("{v:.0} files/s")
                }
            };
            let v = g.values[o];
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                op.label,
                fmt(v[0]),
                fmt(v[1]),
                fr(g.ratio(o))
            );
        }
        s.push('\n');
    }

    fn vmm_section(&self, s: &mut String) {
        s.push_str("## The VMM process: start-up and memory\n\n");
        let v = match &self.vmm {
            Ok(v) => v,
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
                return;
            }
        };
        let _ = write!(
            s,
            "`{}` ({} runs, medians), with a redirecting share. Start-up: from the host's \
             monotonic clock read just before spawning the process to the same clock as the \
             VMM logs it at vCPU 0's first KVM_RUN (`hypervisor/src/vcpu.rs`); it does not \
             depend on how fast the guest then runs, so it is meaningful on any host. Memory: \
             `/proc/PID/smaps` sampled every 100 ms for 1.5 s after the first KVM_RUN, the \
             largest sample; guest RAM (the one anonymous {} MiB mapping) is left out, whatever \
             the guest touched. PSS counts shared library pages by their share, RSS in full. \
             On a software-virtualized `/dev/kvm` the VMM needs `--allow-software-kvm` and the \
             guest does not get far, which neither figure depends on.\n\n\
             | figure | value | budget |\n|---|---|---|\n\
             | process start to first KVM_RUN, median | {:.2} ms | (wall time: reported) |\n\
             | process start to first KVM_RUN, fastest run | {:.2} ms | |\n\
             | of which `Vm::run` to first KVM_RUN, median | {:.2} ms | |\n\
             | VMM CPU time (all threads) to first KVM_RUN, median | {:.2} ms | < 10 ms |\n\
             | memory beyond guest RAM, PSS | {:.2} MiB | ≤ 5 MiB |\n\
             | memory beyond guest RAM, RSS | {:.2} MiB | |\n\
             | guest RAM resident (not counted) | {:.2} MiB | |\n\n",
            v.command,
            v.runs,
            crate::vmm::GUEST_MIB,
            v.start_to_entry_ms,
            v.start_to_entry_best_ms,
            v.vm_to_entry_ms,
            v.cpu_to_entry_ms,
            v.pss_mib,
            v.rss_mib,
            v.guest_rss_mib
        );
    }

    fn boot_section(&self, s: &mut String) {
        s.push_str("## Boot time against the peers: VMM start to guest `/init` and to exit\n\n");
        let b = match &self.boot {
            Ok(b) => b,
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
                return;
            }
        };
        let _ = write!(
            s,
            "The same kernel (`build/guest/vmlinux`), initramfs and command line, 128 MiB, guest \
             scenario `exit 0`, under each VMM, from starting its process to the guest's first \
             `/init` line and to the VMM's exit; clock: {}. {} run(s) (the batch booted once \
             each); the table shows each time's median over the runs and the largest \
             difference between runs. The runs took \
             {:.0} s of wall time; each VMM's console output is in {}.{}\n\n\
             | VMM | to guest /init | to VMM exit | run-to-run difference |\n|---|---|---|---|\n",
            b.clock,
            b.results.first().map_or(0, |r| r.runs.len()),
            b.wall_s,
            b.log_dir.display(),
            if b.append.is_empty() {
                String::new()
            } else {
                format!(
                    " **Diagnosis run**: every command line also had `{}`.",
                    b.append.join(" ")
                )
            }
        );
        for r in &b.results {
            let spread = match r.spread_s() {
                Some(d) => format!("{:.1} ms", d * 1e3),
                None => "a run gave no figure".into(),
            };
            match (r.median(), r.problem()) {
                (Some(f), _) => {
                    let _ = writeln!(
                        s,
                        "| {} | {:.3} s | {:.3} s | {spread} |",
                        r.contender.label(),
                        f.init_s,
                        f.exit_s
                    );
                }
                (None, problem) => {
                    let _ = writeln!(
                        s,
                        "| {} | not measured: {} | | |",
                        r.contender.label(),
                        problem.unwrap_or("no figure").replace('|', "/")
                    );
                }
            }
        }
        s.push('\n');
        for line in boot_verdicts(b) {
            let _ = writeln!(s, "- {line}");
        }
        s.push('\n');
        s.push_str(BOOT_STEPS);
    }

    fn budget_section(&self, s: &mut String) {
        s.push_str("## Budget\n\n| figure | ratio | budget | verdict |\n|---|---|---|---|\n");
        let checks = self.checks();
        for c in &checks {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {} | {} |",
                c.figure,
                c.ratio,
                c.budget,
                if c.pass { "PASS" } else { "**MISS**" }
            );
        }
        let misses: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
        if !misses.is_empty() {
            s.push_str("\nLikely causes of the misses:\n\n");
            for c in misses {
                if let Some(cause) = c.cause {
                    let _ = writeln!(s, "- {}: {cause}", c.figure);
                }
            }
        }
        s.push('\n');
    }

    fn device_section(&self, s: &mut String) {
        let d = match &self.device {
            Ok(d) => d,
            Err(why) => {
                let _ = writeln!(
                    s,
                    "## Device level, host side\n\nNot measured in this run: {why}\n"
                );
                return;
            }
        };
        let _ = write!(
            s,
            "## Device level, host side\n\n\
             FUSE requests written by a simulated driver into real guest memory \
             (`GuestMemoryMmap`), made available on a split virtqueue and served by the \
             device's queue loop (`process_queue` + `FuseSession`), one at a time. \
             Host syscalls: the same operations as pread/pwrite/openat/fstatat/fstat/unlinkat/\
             readdir on a plain directory. Medians of {} rounds; in each round the three \
             targets run one after the other, in an order that rotates from round to round, \
             each on fresh directories in the same file system; every ratio is the median of \
             the ratios within each round. Sequential reads read back the file just written \
             (page cache warm); no fsync is timed, and an untimed syncfs separates the data \
             and metadata phases.\n\n",
            d.rounds
        );
        device_tables(s, d);
        s.push_str("### The file system not run as root\n\n");
        match &self.device_unprivileged {
            Ok(d) => {
                let _ = write!(
                    s,
                    "The same rounds, each target run by the bench started again as `nobody` \
                     (uid {}): the file system keeps no file handles (it holds a descriptor per \
                     inode the guest knows instead) and its metadata under `user.fsredirect`, \
                     as a server not run as root does. {} rounds.\n\n",
                    crate::unprivileged::UID,
                    d.rounds
                );
                device_tables(s, d);
            }
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
            }
        }
    }

    fn fio_section(&self, s: &mut String) {
        s.push_str("## Real kernel client: fio through `fsredirect mount`\n\n");
        let fio = match &self.fio {
            Ok(fio) => fio,
            Err(why) => {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
                return;
            }
        };
        let _ = write!(
            s,
            "The Linux FUSE client over /dev/fuse, served by `fsredirect mount` (2 worker \
             threads) on a redirecting and on a passthrough share, against fio in the host \
             directory itself. Medians of {} rounds; in each round every job runs on the three \
             targets one after the other, in rotating order, and every ratio is the median of \
             the ratios within each round; `--invalidate=0` \
             so every target reads the file the write job left in the page cache. Example: \
             `fio {}`\n\n\
             | job | host dir | passthrough mount | redirect mount | passthrough / host | \
             redirect / host | redirect / passthrough |\n|---|---|---|---|---|---|---|\n",
            fio.rounds, fio.example
        );
        for (j, job) in JOBS.iter().enumerate() {
            let fmt = |v: f64| {
                if job.iops {
                    format!("{v:.0} IOPS")
                } else {
                    format!("{:.0} MB/s", v / 1e6)
                }
            };
            let v = fio.values[j];
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                job.name,
                fmt(v[HOST]),
                fmt(v[PT]),
                fmt(v[RED]),
                fr(fio.ratio(j, PT, HOST)),
                fr(fio.ratio(j, RED, HOST)),
                fr(fio.ratio(j, RED, PT)),
            );
        }
        s.push('\n');
    }
}

const HEADER: &str = "# Benchmarks

This file is written by `./bench.sh`; do not edit it by hand, run the command again.

## How to run

```sh
sudo ./bench.sh            # as root: /dev/fuse for the mounts; needs fio and qemu-system-x86
sudo ./bench.sh --boot     # also boot time against the floor VMM and QEMU microvm (minutes more)
./bench.sh --boot-only --out /tmp/boot.md   # only the boot-time comparison
./bench.sh --no-fio        # without the fio part (no root, no fio)
./bench.sh --help          # sizes, rounds, parts to skip, output paths
```

`bench.sh` builds the `bench` crate, `fsredirect` and `hypervisor` in release mode (target
directory `$CARGO_TARGET_DIR`, default `target/`), runs the benchmarks (a few minutes on 2
cores without `--boot`) and rewrites this file and `docs/benchmarks.svg`. What it measures
([docs/architecture.md](docs/architecture.md#measuring-performance)):

1. **Device level, host side**: the virtio-fs device's real request path, driven in-process
   by a simulated driver, over `RedirectFs` with a store (redirect) and without one
   (passthrough), against the same operations as direct host syscalls (the limit).
2. **Real kernel client**: fio through `fsredirect mount` (redirect and passthrough) against
   the host directory.
3. **Real guest**: the guest image under QEMU's software CPU on our `vhost-user-fs` back-end,
   a fixed workload on a redirecting share against a passthrough share (reported, not a
   target: the emulated CPU dominates).
4. **The VMM process**: time from starting it to vCPU 0's first KVM_RUN, and its resident
   memory beyond guest RAM.
5. **Boot time against the peers** (`--boot`): the same kernel, initramfs and command line
   under our VMM (without a share, with the default share, with 2 vCPUs), under the floor
   (`bench/floor-vmm`: one vCPU, serial port and exit port, nothing else; the least a KVM VMM
   must do) and under QEMU's `microvm` machine with KVM; VMM start to guest `/init` and to the
   VMM's exit, three times (medians). Where there is no hardware virtualization they run in the emulated VT-x
   test host's benchmark image (`guest-images/build-testhost.sh --bench`, which adds the
   peers), on its guest clock: comparable VMM to VMM, not a hardware figure.
6. **Vhost-user back-ends** (as root): virtiofsd against our `hypervisor vhost-user-fs`
   (passthrough and redirecting), each a separate process driven over its socket by the same
   simulated front-end and FUSE request stream, 1 and 16 requests in flight, and against the
   same workload as the host's own calls, the limit, in every round
   (`./bench.sh --vhost-user-only` runs only this part; `--no-virtiofsd` leaves virtiofsd out).

Servers not run as root (parts 1 and 6, as root; `--no-unprivileged` leaves them out): the
device rounds run again with each target in the bench started again as `nobody`, and
virtiofsd and ours run as `nobody` over vhost-user, each in its namespace sandbox made inside
a user namespace of its own. Such a server keeps no file handles (it
holds a descriptor per inode instead) and keeps the redirect metadata under
`user.fsredirect`; its shares are written as root, handed over, and the redirecting one's
files moved to the store by `fsredirect dehydrate` run as `nobody`.

Budget: redirect at least 0.9 of passthrough on every throughput, create/unlink p50 latency
at most 1.2x; device-level sequential read/write at least 0.9 of the host-syscall limit,
metadata at least 0.4 of it; over vhost-user, our passthrough at least virtiofsd's figure and
redirect at least 0.9 of our passthrough, at 1 and 16 requests in flight (a figure whose
rounds reach its target counts as met; create and unlink, which wait on the host file
system's journal, may end as named misses); VMM memory beyond guest RAM at most 5 MiB;
the VMM's own CPU time from process start to the first vCPU entry under 10 ms (wall time
reported, not budgeted, on these shared machines); boot: ours (no share) within 60 ms of the
floor to `/init` and to exit, and ahead of QEMU microvm. The device and vhost-user budgets
hold for servers run as root and as an ordinary user alike.

";

const NOT_YET: &str = "## Not yet measured

- Queue depth above 1 and several request queues, at the device level and in the guest.
- Boot time on a hardware-virtualization host (this command measures it there directly with
  `--boot`, but no such host has run it yet).
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BootFigure, ContenderResult};
    use crate::stats::Latencies;
    use std::time::Duration;

    fn boot(figures: &[(Contender, f64, f64)]) -> BootSummary {
        BootSummary {
            clock: "test".into(),
            deterministic: true,
            results: figures
                .iter()
                .map(|&(contender, init_s, exit_s)| ContenderResult {
                    contender,
                    runs: vec![Ok(BootFigure { init_s, exit_s }); 2],
                })
                .collect(),
            wall_s: 1.0,
            append: Vec::new(),
            log_dir: "logs".into(),
        }
    }

    #[test]
    fn boot_checks_hold_ours_to_the_floor_and_ahead_of_qemu() {
        let near = boot(&[
            (Contender::Ours, 1.70, 1.85),
            (Contender::Floor, 1.66, 1.80),
            (Contender::Qemu, 2.70, 2.90),
        ]);
        let far = boot(&[
            (Contender::Ours, 1.80, 3.00),
            (Contender::Floor, 1.66, 1.80),
            (Contender::Qemu, 1.70, 2.90),
        ]);

        let passes = |b: &BootSummary| boot_checks(b).iter().map(|c| c.pass).collect::<Vec<_>>();
        assert_eq!(passes(&near), [true, true, true, true]);
        assert_eq!(passes(&far), [false, false, false, false]);
        assert!((boot_checks(&near)[0].ratio - 40.0).abs() < 1e-6);
    }

    #[test]
    fn the_boot_section_gives_ours_without_filters_against_the_floor() {
        let b = boot(&[
            (Contender::Ours, 1.72, 1.90),
            (Contender::OursUnfiltered, 1.66, 1.81),
            (Contender::Floor, 1.65, 1.80),
        ]);

        let lines = boot_verdicts(&b).join("\n");

        assert!(
            lines.contains("the seccomp filters add +60.0 ms to /init"),
            "{lines}"
        );
        assert!(
            lines.contains("without them, ours − floor: +10.0 ms to /init and +10.0 ms to exit"),
            "{lines}"
        );
    }

    #[test]
    fn a_peer_without_figures_is_said_not_judged() {
        let alone = boot(&[(Contender::Ours, 1.7, 1.8)]);

        assert!(boot_checks(&alone).is_empty());
        let lines = boot_verdicts(&alone).join("\n");
        assert!(lines.contains("floor gave no figure"), "{lines}");
        assert!(lines.contains("QEMU microvm gave no figure"), "{lines}");
    }

    fn figures(scale: f64, meta_us: u64) -> Figures {
        let mut lat = Latencies::default();
        lat.push(Duration::from_micros(meta_us));
        Figures {
            seq_write: 100.0 * scale,
            seq_read: 200.0 * scale,
            rand_read: 10.0 * scale,
            rand_write: 10.0 * scale,
            meta: vec![lat; MetaOp::ALL.len()],
            floor: Latencies::default(),
        }
    }

    #[test]
    fn the_request_floor_bounds_what_a_device_can_reach() {
        let with_floor = |scale: f64, meta_us: u64, floor_us: u64| {
            let mut f = figures(scale, meta_us);
            f.floor.push(Duration::from_micros(floor_us));
            f
        };
        let mut r = report(1.0, 2);
        let runs = [
            vec![figures(1.0, 1)],
            vec![with_floor(0.95, 2, 3)],
            vec![with_floor(0.95, 2, 4)],
        ];
        r.device = Ok(DeviceSummary::from_runs(&runs));
        let md = r.markdown("x.svg");
        assert!(
            md.contains("takes 3.00 µs (p50) on the passthrough share and 4.00 µs on the"),
            "{md}"
        );
        // Host calls of 1 µs behind a floor of 3 µs: at most 1 / (1 + 3) of the host's rate.
        assert!(
            md.contains("more than 0.25 of the host's lookup rate, 0.25"),
            "{md}"
        );
        assert!(!report(1.0, 2).markdown("x.svg").contains("Request floor"));
    }

    fn report(redirect_scale: f64, redirect_meta_us: u64) -> Report {
        let runs = [
            vec![figures(1.0, 1)],
            vec![figures(0.95, 2)],
            vec![figures(0.95 * redirect_scale, redirect_meta_us)],
        ];
        Report {
            machine: Machine::probe(),
            command: "./bench.sh".into(),
            date: "today".into(),
            device_params: "tiny".into(),
            device: Ok(DeviceSummary::from_runs(&runs)),
            device_unprivileged: Err("skipped".into()),
            fio: Err("skipped".into()),
            guest: Err("skipped".into()),
            vmm: Err("skipped".into()),
            boot: Err("skipped".into()),
            vhost_user: Err("skipped".into()),
        }
    }

    #[test]
    fn the_device_rounds_not_run_as_root_have_their_own_tables_and_budget() {
        let mut r = report(1.0, 2);
        let md = r.markdown("x.svg");
        assert!(
            md.contains("### The file system not run as root\n\nNot measured in this run: skipped"),
            "{md}"
        );

        r.device_unprivileged = r.device.clone();
        let md = r.markdown("x.svg");
        let checks = r.checks();

        assert_eq!(
            md.matches("| op | host syscalls | passthrough | redirect |")
                .count(),
            2
        );
        assert!(
            md.contains("run by the bench started again as `nobody`"),
            "{md}"
        );
        let named = |prefix: &str| {
            checks
                .iter()
                .filter(|c| c.figure.starts_with(prefix))
                .count()
        };
        assert_eq!(named("device, not root "), named("device "));
        assert!(checks
            .iter()
            .any(|c| c.figure == "device, not root getattr ops/s: redirect / host syscalls"));
    }

    #[test]
    fn vhost_user_table_shows_a_missing_peer_and_our_spread() {
        use crate::vhost_bench::{OpFigures, RunFigures};
        let run = |ops: f64| -> RunFigures {
            [[OpFigures {
                ops_per_sec: ops,
                ..Default::default()
            }; 2]; crate::vhost_bench::VU_OPS]
        };
        let host = |ops: f64| -> crate::vhost_host::HostFigures {
            [OpFigures {
                ops_per_sec: ops,
                p50_us: 1e6 / ops,
                ..Default::default()
            }; crate::vhost_bench::VU_OPS]
        };
        let mut r = report(1.0, 2);
        r.vhost_user = Ok(VhostUserSummary {
            runs: [
                vec![],
                vec![run(10.0), run(30.0), run(20.0)],
                vec![run(5.0); 3],
                vec![run(25.0), run(25.0), run(25.0)],
                vec![run(10.0), run(15.0), run(40.0)],
                vec![run(8.0), run(12.0), run(10.0)],
                vec![run(10.0), run(10.0), run(10.0)],
                vec![],
            ],
            host: vec![host(40.0), host(50.0), host(100.0)],
            virtiofsd_missing: Some("skipped with --no-virtiofsd".into()),
            virtiofsd_unprivileged_missing: None,
            unprivileged_skipped: None,
            virtiofsd_version: None,
            params: "tiny".into(),
            sandbox: "namespace".into(),
        });

        let md = r.markdown("x.svg");

        assert!(md.contains("virtiofsd has no figures in this run: skipped with --no-virtiofsd"));
        assert!(
            md.contains(
                "| lookup ops/s, 1 in flight | — | 20 (10–30) | 5 (5–5) | 25 (25–25) | 15 \
                 (10–40) | — | — | 0.80 | 1.00 |"
            ),
            "{md}"
        );
        // The servers run as nobody: their own table, their own ratios, a column without
        // runs shown as such.
        assert!(
            md.contains(
                "| metric | virtiofsd, not root | ours passthrough, not root | ours redirect, \
                 not root | passthrough / virtiofsd | redirect / virtiofsd | redirect / \
                 passthrough |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| lookup ops/s, 1 in flight | 10 (8–12) | 10 (10–10) | — | 1.00 | — | — |"
            ),
            "{md}"
        );
        assert!(md.contains("Runs per column: 3 / 3 / 0."), "{md}");
        // Against the host's own calls: the host's spread, then each back-end's figure over
        // the host's of the same round (passthrough: 10/40, 30/50, 20/100; redirect: 5/40,
        // 5/50, 5/100; as nobody, virtiofsd 8/40, 12/50, 10/100 and passthrough 10 over
        // each), for both groups; the missing virtiofsd shown as such.
        assert!(
            md.contains(
                "| metric | host syscalls | virtiofsd / host, 1 in flight | passthrough / host, \
                 1 in flight | redirect / host, 1 in flight | virtiofsd / host, 16 in flight | \
                 passthrough / host, 16 in flight | redirect / host, 16 in flight |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| lookup ops/s | 50 (40–100) | — | 0.25 | 0.10 | — | 0.25 | 0.10 |"),
            "{md}"
        );
        // Latencies: the fake runs have none, the host 1e6/ops µs.
        assert!(
            md.contains("| lookup p50 latency µs | 20000.00 (10000.00–25000.00) | — | 0.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| lookup ops/s | 50 (40–100) | 0.20 | 0.20 | — | 0.20 | 0.20 | — |"),
            "the servers run as nobody against the same host runs: {md}"
        );
        assert!(md.contains("Host runs: 3."), "{md}");
        let checks = r.checks();
        let not_root = checks
            .iter()
            .find(|c| c.figure == "vhost-user, not root lookup ops/s, 1 in flight: ours passthrough / virtiofsd")
            .expect("a budget line for the servers not run as root");
        assert!(not_root.pass, "{not_root:?}");
    }

    #[test]
    fn budget_passes_when_redirect_matches_passthrough() {
        let checks = report(1.0, 2).checks();

        assert!(checks.iter().all(|c| c.pass), "{checks:#?}");
    }

    #[test]
    fn slow_creates_miss_with_a_cause() {
        let checks = report(1.0, 20).checks();

        let create = checks
            .iter()
            .find(|c| c.figure.contains("create p50"))
            .unwrap();
        assert!(!create.pass);
        assert_eq!(create.ratio, 10.0);
        assert!(create.cause.is_some());
    }

    #[test]
    fn a_device_figure_whose_rounds_reach_the_budget_is_met_and_shows_its_spread() {
        let mut r = report(1.0, 2);
        // Redirect's sequential read is 0.80 of the host's in one round, 0.95 in the other.
        let runs = [
            vec![figures(1.0, 1), figures(1.0, 1)],
            vec![figures(0.95, 2), figures(0.95, 2)],
            vec![figures(0.80, 4), figures(0.95, 4)],
        ];
        r.device = Ok(DeviceSummary::from_runs(&runs));

        let checks = r.checks();

        let line = |name: &str| checks.iter().find(|c| c.figure == name).unwrap();
        let read = line("device seq read 1M: redirect / host syscalls");
        assert!(read.pass, "{read:?}");
        assert_eq!(read.budget, "≥ 0.900 (rounds 0.80–0.95)");
        let getattr = line("device getattr ops/s: redirect / host syscalls");
        assert!(!getattr.pass, "every round at 0.25: {getattr:?}");
        assert_eq!(getattr.budget, "≥ 0.400 (rounds 0.25–0.25)");
    }

    #[test]
    fn markdown_and_svg_carry_the_ratios() {
        let r = report(0.5, 2);

        let md = r.markdown("docs/benchmarks.svg");
        let svg = r.svg();

        assert!(md.contains(
            "| device seq write 1M: redirect / passthrough | 0.500 | ≥ 0.900 (rounds 0.50–0.50) \
             | **MISS** |"
        ));
        assert!(md.contains("Not measured in this run: skipped"));
        assert!(svg.starts_with("<svg") && svg.contains("0.47"));
    }
}
